"""Device, precision and thread selection, GPU memory release and OOM detection.

Why a module: the napari widget, the CLI, the dask workers and training validation must
make the same choices ("auto" = cuda > mps > cpu; bf16 where the hardware runs it natively)
and report them the same way in provenance.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import logging
import os

from napari_rrim_sr.errors import InputError, RRIMError

log = logging.getLogger(__name__)

# The one list of each choice (issue 22): options, CLI parsers, widgets and training import these.
#: device kinds a user can name (``cuda:N`` is accepted too)
DEVICES = ("auto", "cpu", "cuda", "mps")
#: explicit compute precisions
COMPUTE_PRECISIONS = ("fp32", "bf16", "fp16")
#: precisions a user can ask for
PRECISIONS = ("auto",) + COMPUTE_PRECISIONS
#: dtypes weights files may be stored in
STORE_DTYPES = ("fp32", "fp16", "bf16")
#: inference backends: torch everywhere, OpenVINO on the CPU (:mod:`.backends`)
BACKENDS = ("auto", "torch", "openvino")


def _torch():
    import torch

    return torch


def mps_available() -> bool:
    torch = _torch()
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def available_devices() -> list[str]:
    """The device names a user can pick here: auto, cpu and the accelerators torch can see
    (``cuda:N`` listed too when there are several GPUs); cpu only if torch cannot be queried."""
    out = ["auto", "cpu"]
    try:
        torch = _torch()
        if torch.cuda.is_available():
            n = torch.cuda.device_count()
            out += ["cuda"] + ([f"cuda:{i}" for i in range(n)] if n > 1 else [])
        if mps_available():
            out.append("mps")
    except Exception:  # pragma: no cover - torch broken: cpu only
        log.debug("device query failed", exc_info=True)
    return out


def resolve_device(device="auto"):
    """``"auto"`` -> cuda if available, else mps, else cpu; explicit names are checked.

    Accepts ``"cuda:1"`` and ``torch.device`` objects. A requested but unavailable device is an
    error (silently falling back would make timings and results surprising).
    """
    torch = _torch()
    if isinstance(device, torch.device):
        name = str(device)
    else:
        name = str(device or "auto").lower()
    kind = name.split(":")[0]
    if kind not in DEVICES:
        raise InputError(f"device must be one of {DEVICES} (or 'cuda:N'), got {device!r}")
    if kind == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    if kind == "cuda" and not torch.cuda.is_available():
        raise RRIMError("device 'cuda' requested but no CUDA GPU is available to torch")
    if kind == "mps" and not mps_available():
        raise RRIMError("device 'mps' requested but the Apple MPS backend is not available")
    return torch.device(name)


@functools.lru_cache(maxsize=1)
def _cpu_flags() -> frozenset[str]:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


@functools.lru_cache(maxsize=1)
def cpu_bf16_native() -> bool:
    """True when the CPU has bf16 dot-product instructions (AVX512-BF16 or AMX-BF16).

    Without them bf16 convolutions are emulated and slower than fp32, so "auto" keeps fp32.
    """
    torch = _torch()
    cap = ""
    with contextlib.suppress(Exception):
        cap = str(torch.backends.cpu.get_cpu_capability()).upper()
    if "AMX" in cap or "BF16" in cap:
        return True
    flags = _cpu_flags()
    if flags & {"amx_bf16", "avx512_bf16"}:
        return True
    with contextlib.suppress(Exception):  # non-Linux: ask oneDNN (true also when emulated)
        if not flags and torch.ops.mkldnn._is_mkldnn_bf16_supported():
            return "AVX512" in cap
    return False


def cuda_bf16_native(device=None) -> bool:
    torch = _torch()
    try:
        return bool(torch.cuda.is_bf16_supported(including_emulation=False))
    except TypeError:  # older torch
        major, _ = torch.cuda.get_device_capability(device)
        return major >= 8


def resolve_precision(precision="auto", device=None, allowed=None) -> str:
    """``"auto"`` -> bf16 on CPUs with native bf16 and on Ampere+ GPUs, fp16 on older CUDA GPUs,
    fp32 otherwise. ``allowed`` is the backbone's set of reduced precisions it runs correctly in.

    Explicit fp16 on CPU is refused (no fast CPU kernels; it would be slower and less accurate).
    """
    p = str(precision or "auto").lower()
    if p not in PRECISIONS:
        raise InputError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    dev = resolve_device(device if device is not None else "auto")
    allowed = frozenset(allowed) if allowed is not None else frozenset({"bf16", "fp16"})
    if p == "auto":
        if dev.type == "cuda":
            p = "bf16" if cuda_bf16_native(dev) else "fp16"
        elif dev.type == "cpu":
            p = "bf16" if cpu_bf16_native() else "fp32"
        else:
            p = "fp32"
        if p != "fp32" and p not in allowed:
            p = "fp32"
        return p
    if p == "fp16" and dev.type == "cpu":
        raise InputError("fp16 runs on GPUs only; use bf16 or fp32 on the CPU")
    if p != "fp32" and p not in allowed:
        raise InputError(f"this model does not support {p}; use fp32")
    if p == "bf16" and dev.type == "cpu" and not cpu_bf16_native():
        log.warning("this CPU has no native bf16 instructions: bf16 will be emulated (slow)")
    return p


def torch_dtype(precision: str):
    torch = _torch()
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def autocast(device, precision: str):
    """Autocast context for reduced precision (a no-op for fp32)."""
    torch = _torch()
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=torch_dtype(precision))


def use_channels_last(device, precision: str) -> bool:
    """channels_last (NHWC) is the layout oneDNN's fast CPU convolutions use, in fp32 as well as
    bf16 (measured 1.45x faster for fp32 RRIM on AVX-512; docs/benchmarks.md), and what cuDNN's
    tensor cores want for reduced precision on GPU."""
    dev_type = getattr(device, "type", str(device))
    return dev_type == "cpu" or (dev_type == "cuda" and precision != "fp32")


@contextlib.contextmanager
def num_threads(n: int | None):
    """Temporarily set torch's intra-op thread count (``None``: leave as is)."""
    torch = _torch()
    if n is None:
        yield
        return
    n = int(n)
    if n < 1:
        raise InputError(f"threads must be >= 1, got {n}")
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def default_threads() -> int:
    """Physical cores available to this process (torch's own default)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def release_memory(device=None) -> None:
    """Return cached GPU memory to the driver (after runs and after errors), so napari and
    other processes can use it; a no-op on CPU."""
    torch = _torch()
    dev_type = getattr(device, "type", str(device or ""))
    cuda = (dev_type in ("cuda", "") or device is None) and torch.cuda.is_available()
    mps = (dev_type in ("mps", "") or device is None) and mps_available()
    if not (cuda or mps):
        return  # CPU: no cache to return; a full gc.collect() costs seconds in a large (napari) process
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    if mps:
        with contextlib.suppress(Exception):
            torch.mps.empty_cache()


def is_oom(exc: BaseException) -> bool:
    """True for CUDA/MPS out-of-memory errors (the engine then halves the tile and retries)."""
    torch = _torch()
    oom_type = getattr(torch.cuda, "OutOfMemoryError", None)
    if oom_type is not None and isinstance(exc, oom_type):
        return True
    msg = str(exc).lower()
    return isinstance(exc, RuntimeError) and ("out of memory" in msg or "mps backend out of memory" in msg)


def describe(device, precision: str) -> str:
    torch = _torch()
    dev = torch.device(device)
    if dev.type == "cuda":
        name = torch.cuda.get_device_name(dev)
    elif dev.type == "cpu":
        name = f"CPU ({torch.get_num_threads()} threads, {torch.backends.cpu.get_cpu_capability()})"
    else:
        name = dev.type
    return f"{name}, {precision}"


def sync(device) -> None:
    """Wait for queued GPU work on ``device`` (cuda or mps) to finish, so wall-clock timings
    (benchmarks) measure the work, not its launch; a no-op on CPU."""
    torch = _torch()
    dev_type = getattr(device, "type", str(device or "").split(":")[0])
    if dev_type == "cuda":
        torch.cuda.synchronize(device)
    elif dev_type == "mps":
        torch.mps.synchronize()


#: the name the widgets use; the same list
device_choices = available_devices
