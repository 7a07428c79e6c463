"""Inference backends for the CPU: torch (always) and OpenVINO (the optional ``openvino`` extra).

Why a module: OpenVINO runs the same converted network about 2x faster than torch on x86 CPUs
(docs/benchmarks.md), but converting costs seconds and compiling about a second per tile shape.
This module owns that cost so it is paid once: a converted model is kept in memory per weights
sha256 and on disk as OpenVINO IR (validated by its own sha256 before reuse, rebuilt when it is
corrupt), and compiled models are kept in memory per (weights sha256, precision, tile shape,
threads) and on disk in OpenVINO's model cache (``CACHE_DIR``). The engine (:mod:`.upscaler`)
asks :func:`choose_backend` once per run and :func:`compiled` per tile shape; every Upscaler in
the process (CLI, widget, dask workers) shares the same caches.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

from napari_rrim_sr.errors import InputError, RRIMError

log = logging.getLogger(__name__)

#: environment variable overriding the cache folder (tests, read-only homes)
CACHE_ENV = "NAPARI_RRIM_SR_CACHE_DIR"
#: environment variable forcing ``auto`` to one backend ("torch" or "openvino")
BACKEND_ENV = "NAPARI_RRIM_SR_BACKEND"
INSTALL_HINT = "pip install 'napari-rrim-sr[openvino]'"

#: Architectures for which ``auto`` keeps torch in fp32 on this kind of CPU (no native bf16),
#: because OpenVINO fp32 measured no faster there (``bench --backends``, docs/benchmarks.md).
#: Empty: OpenVINO fp32 was faster for every architecture measured on AMD Zen 3 (AVX2).
TORCH_FASTER_FP32: frozenset[str] = frozenset()

#: ``auto`` compiles only when the run is big enough to repay a compile: estimated
#: multiply-adds of the whole run (2 x parameters x input pixels) above this, or a compiled
#: model for the shape already in memory. 2e9 is ~0.2 s of torch fp32 work on 2 Zen 3 cores:
#: every real model at 64² passes (RRIM 64x8: 1.2e10), the tests' 8-feature models do not.
#: (2e10 kept RRIM, SRResNet, Compact and SwinIR on torch at 64² in bench --backends.)
AUTO_MIN_FLOPS = 2e9
#: compiled models kept in memory (a handful of tile shapes of two or three models)
COMPILED_CACHE_SIZE = 8


class BackendUnavailable(RRIMError):
    """The model cannot run on OpenVINO here; the message is the one-line reason."""


def openvino_available() -> bool:
    """True when the ``openvino`` package imports."""
    try:
        import openvino  # noqa: F401
    except Exception:  # ImportError, or a broken install
        return False
    return True


def _ov():
    try:
        import openvino as ov
    except Exception as exc:
        raise BackendUnavailable(f"OpenVINO is not installed ({INSTALL_HINT})") from exc
    return ov


_CORE = None
_CORE_LOCK = threading.Lock()


def _core():
    global _CORE
    with _CORE_LOCK:
        if _CORE is None:
            _CORE = _ov().Core()
        return _CORE


def cache_dir(create: bool = False) -> Path:
    """``$NAPARI_RRIM_SR_CACHE_DIR/openvino`` or platformdirs' user cache dir ``/openvino``."""
    env = os.environ.get(CACHE_ENV)
    if env:
        root = Path(env).expanduser()
    else:
        import platformdirs

        root = Path(platformdirs.user_cache_dir("napari-rrim-sr", appauthor=False))
    path = root / "openvino"
    if create:
        with contextlib.suppress(OSError):
            path.mkdir(parents=True, exist_ok=True)
    return path


def ov_precision(precision: str) -> str:
    return {"fp32": "f32", "bf16": "bf16", "fp16": "f16"}[precision]


# -- conversion ---------------------------------------------------------------------------


def _sha_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _ir_paths(loaded) -> tuple[Path, Path, Path]:
    ver = _ov().__version__.split("-")[0]
    stem = f"{loaded.sha256[:24]}-{loaded.backbone}-c{loaded.in_channels}-ov{ver}"
    d = cache_dir()
    return d / f"{stem}.xml", d / f"{stem}.bin", d / f"{stem}.json"


def _check_model(model, channels: int) -> None:
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise BackendUnavailable("the converted model has more than one input or output")
    if model.inputs[0].get_partial_shape().rank.get_length() != 4:
        raise BackendUnavailable("the converted model's input is not 4-D")


def _read_ir(loaded):
    """The cached IR for ``loaded`` when it is there and intact, else None (a bad one is removed)."""
    xml, binf, meta = _ir_paths(loaded)
    if not (xml.exists() and binf.exists() and meta.exists()):
        return None
    try:
        info = json.loads(meta.read_text())
        if info.get("xml_sha256") != _sha_file(xml) or info.get("bin_sha256") != _sha_file(binf):
            raise ValueError("checksum mismatch")
        model = _core().read_model(str(xml))
        _check_model(model, loaded.in_channels)
        return model
    except Exception as exc:
        log.warning("OpenVINO cache %s is unreadable or corrupt (%s): converting again", xml.name, exc)
        for p in (xml, binf, meta):
            with contextlib.suppress(OSError):
                p.unlink()
        return None


def _write_ir(loaded, model) -> None:
    """Save the IR atomically (temporary names, then rename; the json checksum is written last)."""
    ov = _ov()
    xml, binf, meta = _ir_paths(loaded)
    d = cache_dir(create=True)
    tmp = d / f".tmp-{os.getpid()}-{threading.get_ident()}-{xml.stem}"
    try:
        ov.save_model(model, str(tmp) + ".xml", compress_to_fp16=False)  # direct-write: private cache, renamed below
        # read_model finds the weights by the xml's stem, so both keep one stem
        os.replace(str(tmp) + ".bin", binf)
        os.replace(str(tmp) + ".xml", xml)
        info = {"xml_sha256": _sha_file(xml), "bin_sha256": _sha_file(binf), "weights_sha256": loaded.sha256}
        tmpj = Path(str(tmp) + ".j")
        tmpj.write_text(json.dumps(info))  # direct-write: private cache, renamed below
        os.replace(tmpj, meta)
    except OSError as exc:  # a read-only or full cache folder: run without the disk cache
        log.info("could not write the OpenVINO cache in %s: %s", d, exc)
    finally:
        for suf in (".xml", ".bin", ".j"):
            with contextlib.suppress(OSError):
                Path(str(tmp) + suf).unlink()


def _multiple(loaded) -> int:
    return max(1, int(getattr(loaded.module, "size_multiple", loaded.size_multiple) or 1))


def _example_size(loaded) -> int:
    m = _multiple(loaded)
    return -(-32 // m) * m


def _convert_now(loaded):
    ov = _ov()
    import torch

    c = loaded.in_channels
    n = _example_size(loaded)
    module = loaded.module
    params = list(module.parameters())
    if params and params[0].device.type != "cpu":
        raise BackendUnavailable("the module is not on the CPU")
    x = torch.rand(1, c, n, n, generator=torch.Generator().manual_seed(0))
    was_training = bool(getattr(module, "training", False))
    module.eval()
    try:
        with warnings_quiet():
            model = ov.convert_model(module, example_input=x, input=[ov.PartialShape([1, c, -1, -1])])
    except BackendUnavailable:
        raise
    except Exception as exc:
        first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise BackendUnavailable(f"OpenVINO could not convert the {loaded.backbone} model: {first}") from exc
    finally:
        if was_training:
            module.train(True)
    _check_model(model, c)
    # a conversion that runs but computes something else must never be used: check it once, at
    # another (non-square) size than traced, so sizes baked in as constants (padding, windows) show
    m = _multiple(loaded)
    x2 = torch.rand(1, c, n + max(m, 8), 2 * n, generator=torch.Generator().manual_seed(1))
    try:
        with torch.inference_mode():
            ref = module(x2).float().numpy()
        comp = _core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        got = np.asarray(comp.create_infer_request().infer({0: x2.numpy()})[0], dtype=np.float32)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise BackendUnavailable(f"the OpenVINO conversion of {loaded.backbone} does not run: {first}") from exc
    err = float(np.abs(got - ref).max()) if got.shape == ref.shape else np.inf
    if not err <= 1e-3:
        raise BackendUnavailable(
            f"the OpenVINO conversion of {loaded.backbone} differs from torch (max |diff| {err:.3g})"
        )
    return model


@contextlib.contextmanager
def warnings_quiet():
    """Tracing warnings (TracerWarning etc.) are expected during conversion; keep them out of
    the user's console."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


#: seconds spent converting and compiling in this process (``bench --backends`` reports them)
STATS = {"convert_s": 0.0, "compile_s": 0.0}

_CONVERTED: dict[tuple, Any] = {}
_FAILED: dict[tuple, str] = {}
_LOCK = threading.RLock()


def _conv_key(loaded) -> tuple:
    return (loaded.sha256, loaded.backbone, loaded.in_channels)


def convert(loaded):
    """The OpenVINO model (dynamic height/width) for ``loaded``: from memory, the disk cache, or
    converted now (and saved). Raises :class:`BackendUnavailable` with the reason."""
    if not loaded.sha256:
        raise BackendUnavailable("in-memory weights (no file sha256 to cache a conversion by)")
    key = _conv_key(loaded)
    with _LOCK:
        if key in _FAILED:
            raise BackendUnavailable(_FAILED[key])
        model = _CONVERTED.get(key)
        if model is not None:
            return model
        model = _read_ir(loaded)
        if model is None:
            t0 = time.perf_counter()
            try:
                model = _convert_now(loaded)
            except BackendUnavailable as exc:
                _FAILED[key] = str(exc)
                raise
            finally:
                STATS["convert_s"] += time.perf_counter() - t0
            _write_ir(loaded, model)
        _CONVERTED[key] = model
        return model


def is_converted(loaded) -> bool:
    """True when a conversion is in memory or in the disk cache (so using OpenVINO costs no convert)."""
    if not loaded.sha256:
        return False
    with _LOCK:
        if _conv_key(loaded) in _CONVERTED:
            return True
    return all(p.exists() for p in _ir_paths(loaded))


# -- compilation ---------------------------------------------------------------------------

_COMPILED: "OrderedDict[tuple, Any]" = OrderedDict()


def _compile_key(loaded, precision: str, shape: tuple[int, ...], threads: int) -> tuple:
    return (loaded.sha256, loaded.backbone, precision, tuple(int(v) for v in shape), int(threads))


def _compile(model, precision: str, shape, threads: int):
    core = _core()
    m = model.clone()
    m.reshape({m.inputs[0]: _ov().PartialShape(list(shape))})
    cfg = {
        "INFERENCE_PRECISION_HINT": ov_precision(precision),
        "PERFORMANCE_HINT": "LATENCY",
        "INFERENCE_NUM_THREADS": int(threads),
    }
    d = cache_dir(create=True)
    if d.is_dir() and os.access(d, os.W_OK):
        try:
            return core.compile_model(m, "CPU", dict(cfg, CACHE_DIR=str(d / "compiled")))
        except Exception as exc:  # a corrupt compiled-model cache file: drop it and compile afresh
            log.warning("OpenVINO's compiled-model cache was unusable (%s): rebuilding it", str(exc)[:120])
            clear_compiled_disk_cache()
    return core.compile_model(m, "CPU", cfg)


def clear_compiled_disk_cache() -> None:
    """Remove OpenVINO's compiled-model blobs (they are rebuilt on the next compile)."""
    d = cache_dir() / "compiled"
    if d.is_dir():
        for p in d.iterdir():
            with contextlib.suppress(OSError):
                p.unlink()


def compiled_cached(loaded, precision: str, shape, threads: int) -> bool:
    with _LOCK:
        return _compile_key(loaded, precision, shape, threads) in _COMPILED


def compiled(loaded, precision: str, shape, threads: int):
    """A compiled model for ``(weights, precision, input shape, threads)``: compiled once per
    process (and loaded from OpenVINO's disk cache when a previous process compiled it)."""
    key = _compile_key(loaded, precision, shape, threads)
    with _LOCK:
        comp = _COMPILED.get(key)
        if comp is not None:
            _COMPILED.move_to_end(key)
            return comp
        model = convert(loaded)
        t0 = time.perf_counter()
        try:
            comp = _compile(model, precision, shape, threads)
        except Exception as exc:
            raise BackendUnavailable(f"OpenVINO could not compile the model: {str(exc).splitlines()[0][:160]}") from exc
        STATS["compile_s"] += time.perf_counter() - t0
        _COMPILED[key] = comp
        while len(_COMPILED) > COMPILED_CACHE_SIZE:
            _COMPILED.popitem(last=False)
        return comp


class Runner:
    """Runs one model on OpenVINO: numpy (N, C, h, w) float32 in, numpy float32 out.

    One infer request per compiled model and thread (OpenVINO requests are not thread-safe)."""

    def __init__(self, loaded, threads: int):
        self.loaded = loaded
        self.threads = int(threads)
        self._local = threading.local()

    def __call__(self, x: np.ndarray, precision: str) -> np.ndarray:
        comp = compiled(self.loaded, precision, x.shape, self.threads)
        reqs = getattr(self._local, "reqs", None)
        if reqs is None:
            reqs = self._local.reqs = {}
        req = reqs.get(id(comp))
        if req is None or req[0] is not comp:
            req = reqs[id(comp)] = (comp, comp.create_infer_request())
        res = req[1].infer({0: np.ascontiguousarray(x, dtype=np.float32)}, share_inputs=True)
        return np.asarray(res[0], dtype=np.float32)


def _n_params(module) -> int:
    try:
        return int(sum(p.numel() for p in module.parameters()))
    except Exception:
        return 0


def choose_backend(
    requested: str,
    loaded,
    device_type: str,
    precision: str,
    *,
    work_pixels: int | None = None,
    shape=None,
    threads: int = 1,
) -> tuple[str, str]:
    """``(backend, reason)`` for a run: "torch" or "openvino" and one line saying why.

    ``requested`` "torch" always gives torch; "openvino" gives OpenVINO when it is installed, the
    device is the CPU and the model converts (else torch, with the reason); "auto" additionally
    needs weights from a file (a sha256 to cache by), an architecture that OpenVINO runs faster
    at this precision, and a run big enough to repay compiling (``work_pixels`` input pixels
    through the network) unless the compiled model for ``shape`` is already in memory.
    """
    req = str(requested or "auto").lower()
    if req == "auto":
        env = os.environ.get(BACKEND_ENV, "").strip().lower()
        if env in ("torch", "openvino"):
            req = env
    if req == "torch":
        return "torch", "torch backend requested"
    if device_type != "cpu":
        return "torch", f"OpenVINO runs on the CPU; {device_type} runs stay on torch"
    if not openvino_available():
        return "torch", f"OpenVINO is not installed ({INSTALL_HINT})"
    if precision not in ("fp32", "bf16"):
        return "torch", f"OpenVINO on the CPU runs fp32 or bf16, not {precision}"
    if req == "auto":
        if not loaded.sha256:
            return "torch", "in-memory weights: OpenVINO is used for weights loaded from a file"
        if precision == "fp32" and loaded.backbone in TORCH_FASTER_FP32:
            return "torch", f"torch fp32 measured faster than OpenVINO fp32 for {loaded.backbone} on this CPU"
        with _LOCK:
            failed = _FAILED.get(_conv_key(loaded))
        if failed:
            return "torch", failed
        warm = shape is not None and compiled_cached(loaded, precision, shape, threads)
        if not warm and work_pixels is not None:
            flops = 2.0 * _n_params(loaded.module) * float(work_pixels)
            if flops < AUTO_MIN_FLOPS:
                return "torch", "small run: compiling for OpenVINO would cost more than it saves"
    try:
        convert(loaded)
    except BackendUnavailable as exc:
        return "torch", str(exc)
    return "openvino", "OpenVINO on the CPU" + (" (auto)" if req == "auto" else "")


def check_backend(backend: str, device_type: str) -> None:
    """Refuse an explicit OpenVINO request that cannot run at all (not installed, or a GPU)."""
    if backend != "openvino":
        return
    if device_type != "cpu":
        raise InputError(f"the OpenVINO backend runs on the CPU; use device='cpu' (got {device_type})")
    if not openvino_available():
        raise InputError(f"backend 'openvino' requested but OpenVINO is not installed ({INSTALL_HINT})")


def clear_caches() -> None:
    """Forget converted and compiled models held in memory (the disk cache stays)."""
    with _LOCK:
        _CONVERTED.clear()
        _FAILED.clear()
        _COMPILED.clear()
