"""A self-contained, single-file copy of a built-in architecture, for model packages.

A bioimage.io ``pytorch_state_dict`` entry names a Python file and a callable; consumers
(bioimageio.core, deepImageJ's Python engine, BiaPy) import that file without this project
installed. The copy is *generated* from the project's own model modules at export time (the
module's source plus the helpers it imports from :mod:`napari_rrim_sr.models.common`), so it
cannot drift from the code that trained the weights. Only modules whose imports are torch, the
standard library and ``.common`` can be made self-contained; any other backbone (e.g. one a
plugin registers) is refused with :class:`ExportError`.
"""

from __future__ import annotations

import ast
import inspect
from importlib import import_module

from napari_rrim_sr.errors import RRIMError

#: backbone id -> (module under napari_rrim_sr.models, callable building the generator)
STANDALONE = {
    "rrim": ("rrim", "RRIM"),
    "srresnet": ("srresnet", "SRResNet"),
    "rrdbnet": ("rrdbnet", "RRDBNet"),
}

_ALLOWED_IMPORTS = {
    "__future__",
    "logging",
    "math",
    "re",
    "typing",
    "collections",
    "torch",
    "torch.nn",
    "torch.nn.functional",
}


class ExportError(RRIMError):
    """A model cannot be exported in the requested format (architecture, shapes, missing package)."""


def architecture_callable(backbone: str) -> str:
    """The name of the callable in :func:`standalone_source`'s file for ``backbone``."""
    if backbone not in STANDALONE:
        raise ExportError(
            f"backbone {backbone!r} has no self-contained architecture source to ship in a bioimage.io "
            f"package (exportable: {', '.join(sorted(STANDALONE))}); export it with --format onnx instead"
        )
    return STANDALONE[backbone][1]


def _strip(source: str, module_name: str) -> list[str]:
    """``source`` without its docstring, ``from __future__``/``.common`` imports and ``__all__``."""
    tree = ast.parse(source)
    drop: set[int] = set()
    for i, node in enumerate(tree.body):
        span = range(node.lineno - 1, node.end_lineno)
        if i == 0 and isinstance(node, ast.Expr) and isinstance(getattr(node, "value", None), ast.Constant):
            drop.update(span)  # module docstring
        elif isinstance(node, ast.ImportFrom):
            # `from .common import ...` or, once imports are absolute, `from napari_rrim_sr.models.common import ...`
            is_common = (node.level == 1 and node.module == "common") or node.module == "napari_rrim_sr.models.common"
            if is_common or node.module == "__future__":
                drop.update(span)
            elif node.level or node.module not in _ALLOWED_IMPORTS:
                raise ExportError(f"models.{module_name} imports {node.module!r}; it cannot be made self-contained")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name not in _ALLOWED_IMPORTS:
                    raise ExportError(f"models.{module_name} imports {alias.name!r}; it cannot be made self-contained")
        elif isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "__all__" for t in node.targets):
            drop.update(span)
    return [line for n, line in enumerate(source.splitlines()) if n not in drop]


def standalone_source(backbone: str) -> str:
    """Python source defining ``architecture_callable(backbone)`` with only torch imported."""
    callable_name = architecture_callable(backbone)
    module_name = STANDALONE[backbone][0]
    common = import_module("napari_rrim_sr.models.common")
    model = import_module(f"napari_rrim_sr.models.{module_name}")
    doc = (model.__doc__ or "").strip()
    parts = [
        '"""' + f"{callable_name}: self-contained copy of napari_rrim_sr.models.{module_name}, generated for "
        "export.\n\nImports only torch and the standard library; build with "
        f"``{callable_name}(**kwargs)`` (the kwargs of the package's rdf.yaml) and load the package's "
        "state dict with ``strict=True``.\n\n" + doc.replace('"""', "'''") + '\n"""',
        "",
        "from __future__ import annotations",
        "",
        "# ---- from napari_rrim_sr.models.common " + "-" * 60,
        *_strip(inspect.getsource(common), "common"),
        "",
        f"# ---- from napari_rrim_sr.models.{module_name} " + "-" * 60,
        *_strip(inspect.getsource(model), module_name),
        "",
        f"__all__ = [{callable_name!r}]",
        "",
    ]
    text = "\n".join(parts)
    compile(text, f"{module_name}_architecture.py", "exec")  # a syntax slip fails here, not in a consumer
    return text
