"""Chunk-by-chunk, resumable upscaling of data larger than memory into an OME-Zarr store.

Why not ``upscale_dask(...).to_zarr()``: a killed dask graph leaves no record of what was
finished, and its memory is the scheduler's to bound. Here every output chunk is one task:

1. read the input block plus a ``halo`` of real neighbour pixels (read-only store);
2. upscale it with the public engine call :func:`napari_rrim_sr.engine.api.upscale` and crop the
   upscaled halo, so chunk seams behave like the engine's tile seams;
3. write the chunk into the final level-0 array (chunks never straddle tasks), ``fsync`` it;
4. only then write its completion marker ``.rrim_done/<index>`` (atomically: a temporary and
   ``os.replace``), holding the chunk's sha256.

A run killed at any point (SIGKILL included) leaves chunks whose markers are missing, never a
marker for a partial chunk; ``resume=True`` recomputes exactly the unmarked chunks. The job
record ``.rrim_job.json`` holds the settings that determine the result (model sha256,
normalisation, halo, tile, precision...) and a resume with other settings is refused.

Exactness: the intensity normalisation is computed once over the whole input (dtype range,
or a global min/max/percentile pass) and passed to every chunk as the same
:class:`~napari_rrim_sr.engine.normalize.Normalization`, so level 0 equals the in-memory
``upscale`` of the same data up to chunk-seam effects (as :func:`engine.upscale_dask`).

Memory per worker: one input block + halo, its upscaled copy, and the model's activations
for it (see :func:`chunk_memory`), whatever the dataset size. The client keeps at most
``2 x workers`` tasks in flight and receives only small records, never pixel data.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import itertools
import json
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor
from concurrent.futures import wait as _futures_wait
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from napari_rrim_sr import read_guard
from napari_rrim_sr.errors import InputError, OutputError, WeightsError
from napari_rrim_sr.io.ngff import Source, open_array
from napari_rrim_sr.safe_write import check_target, fsync_path, remove_output

__all__ = [
    "DEFAULT_CHUNK",
    "DEFAULT_HALO",
    "DONE_DIR",
    "JOB_FILE",
    "ChunkJob",
    "chunk_memory",
    "open_scheduler",
    "plan_job",
    "plan_output",
    "run_chunks_iter",
    "run_job",
    "run_job_iter",
    "upscale_to_store",
]

DONE_DIR = ".rrim_done"
JOB_FILE = ".rrim_job.json"
LOCK_FILE = ".rrim_lock"  # flock'ed by the run writing the store (released by the OS when it dies)
FINGERPRINT_BLOCKS = 16  # input blocks hashed for the resume fingerprint (spread over the grid)
COMPLETE = "COMPLETE"
DEFAULT_CHUNK = 512  # output chunk edge (pixels): 256 KB per uint8 plane chunk, good for viewers
DEFAULT_HALO = 24  # input pixels of real context around each block (the engine's tile overlap)
LEVEL0 = "0"
_COMPUTE_LOCK = threading.Lock()  # one engine call at a time per process (threads share the Upscaler)


@dataclass
class ChunkJob:
    """Everything a worker needs for its chunks (picklable, small)."""

    source_kind: str
    source_path: str
    source_array: str
    source_series: int
    in_shape: tuple[int, ...]
    dtype: str
    spatial: tuple[int, int]
    scale: int
    block: int  # input pixels per output chunk edge
    halo: int
    out_path: str
    model: Any  # weights path / id (loaded once per worker process), or a LoadedModel / ModelRef
    model_sha256: str | None
    norm: Any  # a Normalization, identical for every chunk
    engine_kw: dict = field(default_factory=dict)
    source_obj: Any = None  # an in-process array (kind "object"); travels pickled to workers

    @property
    def out_shape(self) -> tuple[int, ...]:
        return tuple(n * self.scale if a in self.spatial else n for a, n in enumerate(self.in_shape))

    @property
    def out_chunks(self) -> tuple[int, ...]:
        return tuple(
            min(self.block * self.scale, self.out_shape[a]) if a in self.spatial else 1
            for a in range(len(self.in_shape))
        )

    def _ranges(self) -> list[range]:
        return [range(-(-n // self.block)) if a in self.spatial else range(n) for a, n in enumerate(self.in_shape)]

    def n_chunks(self) -> int:
        """How many output chunks level 0 has (computed, not listed)."""
        n = 1
        for r in self._ranges():
            n *= len(r)
        return n

    def iter_grid(self) -> Iterator[tuple[int, ...]]:
        """Chunk indices (one per output chunk of level 0), generated lazily: a store declaring
        10^13 chunks must not become a list in memory."""
        return itertools.product(*self._ranges())

    def grid(self) -> list[tuple[int, ...]]:
        """Chunk indices as a list (small jobs, tests); prefer :meth:`iter_grid`."""
        return list(self.iter_grid())

    def settings(self) -> dict:
        """What determines the result: a resume must match it exactly."""
        from napari_rrim_sr.jsonable import jsonable

        norm = self.norm.as_dict() if hasattr(self.norm, "as_dict") else self.norm
        return jsonable(
            {
                "source": {
                    "path": str(Path(self.source_path).resolve()) if self.source_path else None,
                    "array": self.source_array,
                    "shape": list(self.in_shape),
                    "dtype": self.dtype,
                },
                "model_sha256": self.model_sha256,
                "scale": self.scale,
                "block": self.block,
                "halo": self.halo,
                "normalization": norm,
                "engine": {k: v for k, v in sorted(self.engine_kw.items()) if k != "threads"},  # threads: speed only
            }
        )


def chunk_memory(block: int, halo: int, scale: int, itemsize: int, num_feat: int = 64) -> int:
    """Rough peak bytes of one chunk task: input block + halo, float copies, upscaled block, and
    a few feature maps of the model at input and output resolution (float32)."""
    n_in = (block + 2 * halo) ** 2
    n_out = n_in * scale * scale
    return int(n_in * (itemsize + 4 * (1 + 4 * num_feat)) + n_out * (itemsize + 4 * 4))


# -- the worker side -----------------------------------------------------------------------

_OPEN: dict = {}
_VERIFIED: set = set()


def _cached(key, opener):
    a = _OPEN.get(key)
    if a is None:
        if len(_OPEN) > 8:
            _OPEN.clear()
        a = _OPEN[key] = opener()
    return a


def marker_path(out_path: str | Path, idx: tuple[int, ...]) -> Path:
    return Path(out_path) / DONE_DIR / "_".join(str(i) for i in idx)


def _write_marker(path: Path, record: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{threading.get_ident()}")
    with open(tmp, "w") as fh:  # direct-write: per-thread temporary, fsynced then renamed
        json.dump(record, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _read_marker(path: Path) -> dict | None:
    try:
        with open(path) as fh:
            rec = json.load(fh)
        return rec if isinstance(rec, dict) and "sha256" in rec else None
    except (OSError, ValueError):
        return None


def _check_model(job: ChunkJob) -> None:
    """Once per process: the weights a worker loads are the ones the job was planned with."""
    if job.model_sha256 is None or not isinstance(job.model, (str, os.PathLike)):
        return
    key = (str(job.model), job.model_sha256)
    if key in _VERIFIED:
        return
    from napari_rrim_sr.engine import api as engine

    kw = {k: job.engine_kw[k] for k in ("device", "precision", "threads", "self_ensemble") if k in job.engine_kw}
    up = engine.get_upscaler(job.model, channels=1, **kw)  # the engine's per-process cache
    if up.model.sha256 != job.model_sha256:
        raise WeightsError(
            job.model, f"has sha256 {up.model.sha256} on this worker, the job expects {job.model_sha256}"
        )
    _VERIFIED.add(key)


def _source_array(job: ChunkJob):
    if job.source_obj is not None:
        return job.source_obj
    return _cached(
        ("in", job.source_kind, job.source_path, job.source_array),
        lambda: open_array(job.source_kind, job.source_path, job.source_array, job.source_series),
    )


def source_fingerprint(job: ChunkJob, n_blocks: int = FINGERPRINT_BLOCKS) -> dict:
    """What the input held when a run started: sha256 of up to ``n_blocks`` input blocks spread
    over the chunk grid (first and last included) plus the array's shape and dtype. A resume
    compares it, so pixels changed in place (same shape and dtype) are not mixed with old chunks."""
    src = _source_array(job)
    dims = [len(r) for r in job._ranges()]
    n = job.n_chunks()  # the grid is indexed, not listed: a store may have 10^7 chunks
    k = min(n_blocks, n)
    picks = sorted({round(i * (n - 1) / max(1, k - 1)) for i in range(k)})
    h = hashlib.sha256()
    h.update(json.dumps([list(job.in_shape), job.dtype]).encode())
    b = job.block
    for i in picks:
        idx = tuple(int(v) for v in np.unravel_index(i, dims))  # itertools.product order (C order)
        sel = tuple(
            slice(j * b, min(job.in_shape[a], (j + 1) * b)) if a in job.spatial else j for a, j in enumerate(idx)
        )
        h.update(np.ascontiguousarray(np.asarray(src[sel])).tobytes())
    return {"sha256": h.hexdigest(), "blocks": len(picks), "shape": list(job.in_shape), "dtype": job.dtype}


def process_chunk(job: ChunkJob, idx: tuple[int, ...]) -> dict:
    """Compute, write and mark one output chunk of level 0; returns a small record."""
    import resource

    import zarr

    from napari_rrim_sr.engine import api as engine

    t0 = time.perf_counter()
    c0 = time.process_time()
    _check_model(job)
    src = _source_array(job)
    out = _cached(("out", job.out_path), lambda: zarr.open_array(str(Path(job.out_path) / LEVEL0), mode="r+"))
    s, b, h = job.scale, job.block, job.halo
    read_idx: list[Any] = []
    crop: list[slice] = []
    write_idx: list[Any] = []
    for a, i in enumerate(idx):
        if a in job.spatial:
            n = job.in_shape[a]
            lo, hi = i * b, min(n, (i + 1) * b)
            rlo, rhi = max(0, lo - h), min(n, hi + h)
            read_idx.append(slice(rlo, rhi))
            crop.append(slice((lo - rlo) * s, (lo - rlo + hi - lo) * s))
            write_idx.append(slice(lo * s, hi * s))
        else:
            read_idx.append(i)
            write_idx.append(slice(i, i + 1))
    block = np.asarray(src[tuple(read_idx)])
    t_read = time.perf_counter()
    model = (
        job.model.get() if hasattr(job.model, "get") and not isinstance(job.model, (str, os.PathLike)) else job.model
    )
    with _COMPUTE_LOCK:
        res = engine.upscale(
            block, model=model, spatial_axes=(0, 1), rgb=False, normalization=job.norm, **job.engine_kw
        )
    t_comp = time.perf_counter()
    res = np.ascontiguousarray(res[tuple(crop)])
    shaped = res.reshape(tuple(1 if a not in job.spatial else res.shape[job.spatial.index(a)] for a in range(len(idx))))
    out[tuple(write_idx)] = shaped
    # flush the chunk's file(s) before its marker exists (local stores; remote stores are durable on return)
    chunk_coords = tuple(w.start // c for w, c in zip(write_idx, job.out_chunks))
    try:
        key = out.metadata.encode_chunk_key(chunk_coords)
        fsync_path(Path(job.out_path) / LEVEL0 / key)
    except Exception:  # noqa: BLE001 - best effort: not every store is a folder
        pass
    digest = hashlib.sha256(res.tobytes()).hexdigest()
    t_write = time.perf_counter()
    _write_marker(marker_path(job.out_path, idx), {"sha256": digest})
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {
        "chunk": list(idx),
        "sha256": digest,
        "read_s": t_read - t0,
        "compute_s": t_comp - t_read,
        "write_s": t_write - t_comp,
        "seconds": time.perf_counter() - t0,
        "in_bytes": int(block.nbytes),
        "cpu_s": time.process_time() - c0,  # this process's CPU time: the cost without other load
        "out_bytes": int(res.nbytes),
        "peak_rss": int(rss),
        "pid": os.getpid(),
    }


# -- planning ------------------------------------------------------------------------------


def plan_output(shape, dtype, scale: int = 4, budget: int | None = None, n_spatial: int = 2) -> tuple[str, str]:
    """``("memory" | "store", reason)``: whether an upscaled copy of ``shape`` fits in ``budget``
    bytes (default: 50 % of the available memory). What a widget shows before it runs."""
    from napari_rrim_sr.engine.memory import available_memory, format_bytes, output_nbytes

    need = output_nbytes(shape, dtype, scale, n_spatial)
    avail = available_memory()
    if budget is None:
        budget = int(0.5 * avail) if avail else 4 << 30
    if need <= budget:
        return "memory", f"the result ({format_bytes(need)}) fits in the memory budget ({format_bytes(budget)})"
    return "store", (
        f"the result ({format_bytes(need)}) exceeds the memory budget ({format_bytes(budget)}); "
        "it is written chunk by chunk to an OME-Zarr store and shown lazily"
    )


def plan_job(
    src: Source,
    out_path: Path | str,
    *,
    model=None,
    normalization="dtype",
    percentiles=(0.1, 99.9),
    bit_depth=None,
    chunk: int = DEFAULT_CHUNK,
    halo: int = DEFAULT_HALO,
    tile=None,
    overlap=None,
    device: str = "auto",
    precision: str = "auto",
    threads: int | None = None,
    self_ensemble: bool = False,
    array=None,
    **engine_extra: Any,
) -> ChunkJob:
    """Resolve the model and the global normalisation once, up front, and describe the job.

    ``model`` may be ``"auto"``/None (chosen from the data's representative plane, as
    :func:`napari_rrim_sr.pipeline.plan` does), an id, a path or a LoadedModel; ``normalization``
    a mode or a ready :class:`~.normalize.Normalization` (the pipeline passes the planned one).
    ``engine_extra``: more engine settings (e.g. ``backend``), recorded in the job's settings.
    """
    import dask.array as da

    from napari_rrim_sr.engine import api as engine
    from napari_rrim_sr.engine.normalize import compute_normalization

    # bounded before anything reads the data (the automatic choice measures a plane); x4 is
    # every built-in model's scale, the exact check follows once the model is known
    check_declared(src, 4, max(1, int(chunk) // 4))
    arr = array if array is not None else src.open()
    if model is None or (isinstance(model, str) and model == "auto"):
        model = _auto_model(arr, src)
    loaded = engine.resolve_model(model, 1)
    s = int(loaded.scale)
    chunk = int(chunk)
    if chunk < s or chunk % s:
        raise InputError(f"--chunk {chunk} must be a positive multiple of the model's scale ({s})")
    if halo < 0:
        raise InputError(f"--halo must be >= 0, got {halo}")
    check_declared(src, s, chunk // s)  # before any pass over the data and before any output exists
    lazy = arr if type(arr).__module__.startswith("dask") else da.from_array(arr, chunks=_stats_chunks(src))
    norm = compute_normalization(lazy, normalization, percentiles=percentiles, bit_depth=bit_depth)
    if loaded.path is not None and loaded.sha256:
        model_arg: Any = str(loaded.path)
    else:
        model_arg = engine.ModelRef(loaded)
    ekw: dict = {
        "tile": tile,
        "overlap": overlap,
        "device": device,
        "precision": precision,
        "self_ensemble": bool(self_ensemble),
    }
    if threads is not None:
        ekw["threads"] = int(threads)
    ekw.update({k: v for k, v in engine_extra.items() if v not in (None, "auto")})
    return ChunkJob(
        src.kind,
        str(src.path),
        src.array_path,
        src.series,
        tuple(src.shape),
        str(src.dtype),
        src.spatial,
        s,
        chunk // s,
        int(halo),
        str(out_path),
        model_arg,
        loaded.sha256,
        norm,
        ekw,
    )


def _auto_model(arr, src: Source):
    """The automatic model for a store: measured on its representative plane (never the word
    "auto" passed to the loader); None (the registry default) when no clean/robust pair is there."""
    from napari_rrim_sr.registry.choice import choose_for_layer, installed_weight_ids

    choice = choose_for_layer(arr, rgb=False, spatial_axes=src.spatial, available_ids=installed_weight_ids())
    return choice.weights_id


#: What a source may declare: a crafted 16 KB store can claim 10^9 x 10^9 pixels.
MAX_ELEMENTS = 1 << 44  # 17.6 T input elements (35 TB of uint16): beyond any real acquisition
MAX_CHUNKS = 1 << 24  # 16.7 M output chunks (one completion marker each)


def check_declared(src: Source, scale: int, block: int) -> None:
    """Refuse sources whose declared size no run could finish (one clear line, no output made)."""
    from napari_rrim_sr.engine.memory import format_bytes

    shape = tuple(int(n) for n in src.shape)
    if any(n <= 0 for n in shape):
        raise InputError(f"{src.path}: declares an empty shape {list(shape)}; nothing to upscale")
    n = 1
    for v in shape:
        n *= v
    chunks = 1
    for a, v in enumerate(shape):
        chunks *= -(-v // block) if a in src.spatial else v
    if n > MAX_ELEMENTS or chunks > MAX_CHUNKS:
        raise InputError(
            f"{src.path}: declares shape {list(shape)} ({n:.3g} elements, "
            f"{format_bytes(n * np.dtype(src.dtype).itemsize)}, {chunks:.3g} output chunks of "
            f"{block * scale} px); more than this tool processes ({MAX_ELEMENTS:.3g} elements, "
            f"{MAX_CHUNKS:.3g} chunks): crop it, or raise --chunk"
        )


def _stats_chunks(src: Source, max_blocks: int = 4096, max_bytes: int = 64 << 20) -> tuple | str:
    """Read chunks for the one statistics pass, grouped so the dask graph stays small: a store of
    10^7 one-plane chunks would otherwise spend minutes building (and tokenising) its graph."""
    chunks = _read_chunks(src)
    if chunks == "auto" or not src.shape:
        return chunks
    shape = [int(n) for n in src.shape]
    c = [min(int(x), n) for x, n in zip(chunks, shape)]
    item = np.dtype(src.dtype).itemsize

    def blocks() -> int:
        n = 1
        for x, s in zip(c, shape):
            n *= -(-s // x)
        return n

    while blocks() > max_blocks:
        grown = False
        for a in range(len(c)):  # leading (plane) axes first
            nbytes = item * int(np.prod(c, dtype=np.float64))
            if c[a] < shape[a] and nbytes * 2 <= max_bytes:
                c[a] = min(shape[a], c[a] * 2)
                grown = True
                break
        if not grown:
            break
    return tuple(c)


def _read_chunks(src: Source) -> tuple:
    return tuple(max(c, 1) for c in src.chunks) if src.chunks else "auto"


# -- running -------------------------------------------------------------------------------


def _quiet_distributed() -> None:
    """dask.distributed logs its start and stop at INFO through the root handler: keep that for
    ``-v`` (root at DEBUG) and show only its warnings otherwise."""
    import logging

    if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
        for name in ("distributed", "distributed.scheduler", "distributed.nanny", "distributed.core"):
            logging.getLogger(name).setLevel(logging.WARNING)
        logging.getLogger("distributed.http.proxy").setLevel(logging.ERROR)
        logging.getLogger("distributed.nanny").setLevel(logging.ERROR)  # "still alive ... killing" at our close


def open_scheduler(spec: str | None, *, memory_limit: str | None = None, dashboard: bool = False):
    """``(client, closer, n_workers)`` for ``None``/"threads" (in-process threads: client None),
    ``"local:N"`` (a LocalCluster of N single-threaded worker processes) or a scheduler address.

    A local cluster logs only warnings and serves no dashboard (nor anything on port 8787)
    unless ``dashboard`` is true; then ``client.dashboard_link`` says where."""
    if spec in (None, "", "threads"):
        return None, (lambda: None), 2
    try:
        import distributed
    except ImportError:
        raise InputError("--scheduler needs the 'distributed' package") from None
    if spec.startswith("local:"):
        try:
            n = int(spec.split(":", 1)[1])
        except ValueError:
            n = 0
        if n < 1:
            raise InputError(f"--scheduler {spec!r}: expected local:N with N >= 1 workers")
        _quiet_distributed()
        # the scheduler's HTTP server (health/metrics routes) listens anyway: on a free local port,
        # not the well-known 8787, and without the dashboard unless asked
        http = {"dashboard": True} if dashboard else {"dashboard": False, "dashboard_address": "127.0.0.1:0"}
        cluster = distributed.LocalCluster(
            n_workers=n,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address="127.0.0.1:8787" if dashboard else None,
            silence_logs=40,
            memory_limit=memory_limit or "auto",
            scheduler_kwargs=http,
        )
        client = distributed.Client(cluster)

        def close():
            client.close()
            cluster.close()

        return client, close, n
    _quiet_distributed()
    try:
        client = distributed.Client(spec, timeout=30)
    except Exception as exc:  # noqa: BLE001
        raise InputError(f"--scheduler {spec}: cannot connect ({type(exc).__name__}: {exc})") from None
    n = max(1, len(client.scheduler_info().get("workers", {})))
    return client, client.close, n


def _n_markers(job: ChunkJob) -> int:
    """Completion markers already in the store (counted from the folder, not per chunk)."""
    try:
        return sum(
            1 for e in os.scandir(Path(job.out_path) / DONE_DIR) if not e.name.startswith(".") and e.name != COMPLETE
        )
    except OSError:
        return 0


def _pending_chunks(job: ChunkJob) -> Iterator[tuple[int, ...]]:
    """Chunks without a completion marker, lazily; a fresh store (no markers) is not stat'ed
    chunk by chunk (10^7 planes would take minutes)."""
    done_dir = Path(job.out_path) / DONE_DIR
    try:
        empty = not any(os.scandir(done_dir))
    except OSError:
        empty = True
    if empty:
        return job.iter_grid()
    return (idx for idx in job.iter_grid() if _read_marker(marker_path(job.out_path, idx)) is None)


def _create_store(job: ChunkJob) -> None:
    import zarr

    out = Path(job.out_path)
    zarr.open_group(str(out), mode="w-", zarr_format=3)
    zarr.create_array(
        str(out / LEVEL0),
        shape=job.out_shape,
        chunks=job.out_chunks,
        dtype=job.dtype,
        fill_value=0,
        dimension_names=None,
        zarr_format=3,
    )
    (out / DONE_DIR).mkdir()


class StoreLock:
    """An exclusive ``flock`` on ``<store>/.rrim_lock`` held while a run writes the store: a second
    run (``--resume`` twice, or ``--overwrite`` of a store being written) is refused with one line.
    The OS drops the lock when its process dies, so a killed run never blocks its resume."""

    def __init__(self, out: Path):
        self.out = Path(out)
        self._fh = None

    def acquire(self) -> "StoreLock":
        if self._fh is not None:
            return self
        try:
            import fcntl
        except ImportError:  # no flock (Windows): no protection against a concurrent run
            return self
        path = self.out / LOCK_FILE
        try:
            fh = open(path, "a+")  # direct-write: an empty lock file inside our own output store
        except OSError as exc:
            raise OutputError(self.out, f"cannot create its lock file {LOCK_FILE}: {exc.strerror}") from None
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.close()
            raise OutputError(
                self.out, "another run is writing this store right now; wait for it to finish (then --resume)"
            ) from None
        self._fh = fh
        return self

    def release(self) -> None:
        if self._fh is not None:
            self._fh.close()  # closing the descriptor releases the flock
            self._fh = None


def _check_resumable_store(job: ChunkJob, out: Path) -> None:
    """A job record alone (copied from another run) is not a store: level 0 must be the array
    this job writes (shape, chunks, dtype) and the marker folder must exist."""
    import zarr

    try:
        z = zarr.open_array(str(out / LEVEL0), mode="r")
        ok = (
            tuple(z.shape) == job.out_shape
            and tuple(z.chunks) == job.out_chunks
            and np.dtype(z.dtype) == np.dtype(job.dtype)
            and (out / DONE_DIR).is_dir()
        )
    except Exception:  # noqa: BLE001 - missing or unreadable level 0
        ok = False
    if not ok:
        raise OutputError(
            out,
            f"holds a {JOB_FILE} but not the store it describes (level {LEVEL0} of shape {list(job.out_shape)} "
            f"and {DONE_DIR}/); refusing to resume (use --overwrite to start over)",
        )


def prepare_output(
    job: ChunkJob, *, overwrite: bool = False, resume: bool = False, protect: Iterable = (), command: str | None = None
) -> StoreLock:
    """Create the output store and job record, or check a resumable one (same settings, same
    input pixels, the store the record describes). Returns the store's lock, held: release it
    when the run is over (:func:`run_job` does)."""

    out = Path(job.out_path)
    read_guard.check_write(out, kind="dir", extra=protect)  # also on --resume: never into an input
    protect = [Path(p) for p in protect]
    for src in protect:
        if out.resolve() == src.resolve() or _inside(out, src) or _inside(src, out):
            raise OutputError(out, f"is or overlaps the input {src}; it is never written, even with --overwrite")
    rec_path = out / JOB_FILE
    lock = StoreLock(out)
    if rec_path.is_file() and out.is_dir():  # one of our stores: no other run may be writing it
        lock.acquire()
    try:
        _prepare(job, out, rec_path, lock, overwrite=overwrite, resume=resume, protect=protect, command=command)
    except BaseException:
        lock.release()
        raise
    return lock


def _prepare(job, out, rec_path, lock, *, overwrite, resume, protect, command) -> None:
    from napari_rrim_sr.jsonable import jsonable
    from napari_rrim_sr.safe_write import atomic_write

    if resume and out.exists():
        try:
            rec = json.loads(rec_path.read_text())
            if not isinstance(rec, dict):
                raise ValueError
        except (OSError, ValueError):
            raise OutputError(
                out, f"has no readable {JOB_FILE}; cannot resume (use --overwrite to start over)"
            ) from None
        want = job.settings()
        if rec.get("settings") != want:
            diff = sorted(
                k for k in set(want) | set(rec.get("settings", {})) if want.get(k) != rec.get("settings", {}).get(k)
            )
            raise OutputError(
                out,
                f"was started with other settings ({', '.join(diff)}); refusing to resume "
                "(rerun with the same settings, or --overwrite to start over)",
            )
        _check_resumable_store(job, out)
        had = rec.get("source_fingerprint")
        if had is not None and had != source_fingerprint(job):
            raise OutputError(
                out,
                f"was started from other pixels: {job.source_path or 'the input'} changed since "
                "(same shape and dtype, different content); refusing to resume, which would mix old "
                "and new chunks (use --overwrite to start over)",
            )
        return
    check_target(out, overwrite=overwrite, protect=protect, kind="dir")
    if out.exists():  # --overwrite, checked again by the writer: never an input, never containing one
        lock.release()
        remove_output(out, overwrite=overwrite)
    _create_store(job)
    lock.acquire()
    rec = {
        "settings": job.settings(),
        "source_fingerprint": source_fingerprint(job),
        "command": command,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    atomic_write(rec_path, json.dumps(jsonable(rec), indent=1), protect=protect)


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
        return folder.is_dir()
    except (ValueError, OSError):
        return False


def _wait_first(client, pending):
    if client is None:
        return _futures_wait(pending, return_when=FIRST_COMPLETED)
    import distributed

    return distributed.wait(pending, return_when="FIRST_COMPLETED")


def run_chunks_iter(
    job: ChunkJob,
    chunks: Iterable[tuple[int, ...]],
    *,
    client=None,
    workers: int = 2,
    max_in_flight: int | None = None,
    total: int | None = None,
):
    """Generator: run ``chunks`` on ``client`` (dask.distributed) or in-process threads, bounded
    in flight, yielding ``(done, total)`` after each finished chunk; returns the records.
    ``chunks`` may be a lazy iterator (consumed as tasks are submitted); ``total`` is the total
    reported (default ``len(chunks)`` for a list). Closing it (cancel) cancels the chunks not
    started and waits for the running ones: every finished chunk keeps its marker, so a later
    ``resume`` continues from there."""
    limit = max_in_flight or max(2, 2 * workers)
    records: list[dict] = []
    if total is None:
        total = len(chunks) if hasattr(chunks, "__len__") else 0
    it = iter(chunks)
    nxt = next(it, None)
    pool = ThreadPoolExecutor(max_workers=max(1, workers)) if client is None else None
    job_ref = client.scatter(job, broadcast=True) if client is not None else job
    pending: set = set()
    try:
        while nxt is not None or pending:
            while nxt is not None and len(pending) < limit:
                idx, nxt = nxt, next(it, None)
                if client is None:
                    pending.add(pool.submit(process_chunk, job, idx))
                else:
                    pending.add(client.submit(process_chunk, job_ref, idx, pure=False, retries=1))
            done, pending = _wait_first(client, pending)
            pending = set(pending)
            for f in done:
                try:
                    records.append(f.result())
                except OSError as exc:
                    raise _write_failed(exc, Path(job.out_path)) from None
                yield len(records), total
    finally:
        for f in pending:
            f.cancel()
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
    return records


def _write_failed(exc: OSError, out: Path) -> OutputError:
    """One line for an OSError while running chunks: disk full named as such, with the file."""
    import errno

    where = exc.filename or out
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return OutputError(
            out, f"disk full while writing {where} (free some space, then rerun with --resume to continue)"
        )
    return OutputError(out, f"cannot write {where}: {exc.strerror or exc}")


def run_chunks(
    job: ChunkJob,
    chunks: Iterable[tuple[int, ...]],
    *,
    client=None,
    workers: int = 2,
    progress: Callable[[int, int], Any] | None = None,
    max_in_flight: int | None = None,
    total: int | None = None,
) -> list[dict]:
    """:func:`run_chunks_iter` to its end; ``progress(done, total)`` after each chunk."""
    from napari_rrim_sr.engine.progress import drain

    gen = run_chunks_iter(job, chunks, client=client, workers=workers, max_in_flight=max_in_flight, total=total)
    return drain(gen, (lambda ev: progress(*ev)) if progress is not None else None)


def build_pyramid(job: ChunkJob, *, client=None, min_size: int = 256) -> list[str]:
    """Levels 1.. as 2x2 block means of the previous level on y/x (input dtype, rounded)."""
    import dask
    import dask.array as da
    import zarr

    out = Path(job.out_path)
    paths = [LEVEL0]
    prev = da.from_zarr(str(out / LEVEL0))
    k = 0
    while max(prev.shape[a] for a in job.spatial) > min_size and min(prev.shape[a] for a in job.spatial) >= 2:
        k += 1
        axes = {a: 2 for a in job.spatial}
        trimmed = prev[
            tuple(slice(0, (n // 2) * 2) if a in job.spatial else slice(None) for a, n in enumerate(prev.shape))
        ]
        mean = da.coarsen(np.mean, trimmed.astype(np.float64), axes, trim_excess=True)
        dt = np.dtype(job.dtype)
        if dt.kind in "iu":
            info = np.iinfo(dt)
            mean = da.clip(da.round(mean), info.min, info.max)
        lvl = mean.astype(dt)
        chunks = tuple(min(c, n) for c, n in zip(job.out_chunks, lvl.shape))
        lvl = lvl.rechunk(chunks)
        path = str(k)
        arr = zarr.create_array(
            str(out / path), shape=lvl.shape, chunks=chunks, dtype=dt, fill_value=0, overwrite=True, zarr_format=3
        )
        store = da.store(lvl, arr, lock=False, compute=False)
        if client is not None:
            client.compute(store).result()
        else:
            dask.compute(store, scheduler="threads", num_workers=2)
        paths.append(path)
        prev = da.from_zarr(str(out / path))
    return paths


def run_job_iter(
    job: ChunkJob,
    src: Source,
    *,
    client=None,
    workers: int = 2,
    overwrite: bool = False,
    resume: bool = False,
    command: str | None = None,
    provenance: dict | None = None,
    provenance_extra: dict | None = None,
    protect: Iterable = (),
):
    """Generator form of :func:`run_job`: yields :class:`~.progress.Progress` (chunks counted as
    tiles) and returns the summary. Closing it cancels between chunks (finished chunks stay
    marked: ``resume=True`` continues). ``provenance``: the record of the one provenance builder
    (:func:`napari_rrim_sr.pipeline.build_provenance`); the store's own fields (command,
    settings, chunks, completed, ``provenance_extra``) are added on top."""
    protect = [*([src.path] if src.kind != "object" else []), *protect]
    lock = prepare_output(job, overwrite=overwrite, resume=resume, protect=protect, command=command)
    try:
        return (yield from _run_prepared_iter(job, src, client, workers, command, provenance, provenance_extra))
    except OSError as exc:  # the pyramid or the metadata on a full disk...
        raise _write_failed(exc, Path(job.out_path)) from None
    finally:
        lock.release()


def _run_prepared_iter(job, src, client, workers, command, provenance, provenance_extra):
    from napari_rrim_sr import __version__
    from napari_rrim_sr.engine.progress import Progress
    from napari_rrim_sr.io.ngff import write_result_metadata

    out = Path(job.out_path)
    n = job.n_chunks()  # the grid is generated lazily, never listed (a store may declare 10^7 chunks)
    skipped = min(n, _n_markers(job))
    todo = _pending_chunks(job)
    t0 = time.perf_counter()
    yield Progress(skipped, n, 0, 1, f"{skipped} of {n} chunks already done" if skipped else "starting")
    gen = run_chunks_iter(job, todo, client=client, workers=workers, total=n - skipped)
    try:
        while True:
            try:
                done, _total = next(gen)
            except StopIteration as stop:
                records = stop.value
                break
            yield Progress(skipped + done, n, 0, 1, f"chunk {skipped + done}/{n}")
    finally:
        gen.close()
    t_chunks = time.perf_counter() - t0
    complete = out / DONE_DIR / COMPLETE
    if not complete.exists():
        yield Progress(n, n, 0, 1, "building the pyramid")
        paths = build_pyramid(job, client=client)
        rec = json.loads((out / JOB_FILE).read_text())
        prov = (
            dict(provenance)
            if provenance
            else {
                "software": f"napari-rrim-sr {__version__}",
                "method": "model, chunk by chunk (napari_rrim_sr.pipeline.chunked)",
                "model": _model_provenance(job),
            }
        )
        prov.update(
            {
                "created": rec.get("created"),
                "completed": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                "command": command or rec.get("command"),
                "chunked": "chunk by chunk (napari_rrim_sr.pipeline.chunked)",
                "store_source": {
                    "path": str(src.path),
                    "kind": src.kind,
                    "array": src.array_path,
                    "shape": list(src.shape),
                    "dtype": str(src.dtype),
                    "axes": src.axis_names,
                    "scale": src.scale,
                    "translate": src.translate,
                },
                "settings": job.settings(),
                "chunks": n,
                "chunk_shape": list(job.out_chunks),
                **(provenance_extra or {}),
            }
        )
        write_result_metadata(out, src, job.scale, paths, prov)
        _write_marker(complete, {"sha256": "", "levels": paths})
    return {
        "chunks": n,
        "computed": len(records),
        "skipped": skipped,
        "seconds": t_chunks,
        "records": records,
        "out": str(out),
    }


def run_job(
    job: ChunkJob,
    src: Source,
    *,
    client=None,
    workers: int = 2,
    overwrite: bool = False,
    resume: bool = False,
    quiet: bool = True,
    command: str | None = None,
    provenance: dict | None = None,
    provenance_extra: dict | None = None,
    kill_after: int | None = None,
    progress=None,
    cancel=None,
) -> dict:
    """Prepare (or resume) the output, run the missing chunks, build the pyramid, write metadata.

    Returns a summary: chunks total / computed / skipped, seconds, per-chunk records.
    ``progress``/``cancel`` as :func:`napari_rrim_sr.engine.progress.drain`; ``quiet=False``: a bar.
    """
    from napari_rrim_sr.engine.progress import drain

    gen = run_job_iter(
        job,
        src,
        client=client,
        workers=workers,
        overwrite=overwrite,
        resume=resume,
        command=command,
        provenance=provenance,
        provenance_extra=provenance_extra,
    )
    if quiet:
        return drain(gen, progress, cancel)
    from napari_rrim_sr.engine.progress import drain_with_bar

    return drain_with_bar(gen, src.name, unit="chunk", progress=progress, cancel=cancel)


def _model_provenance(job: ChunkJob) -> dict:
    from napari_rrim_sr.engine import api as engine

    m = job.model.get() if isinstance(job.model, engine.ModelRef) else engine.resolve_model(job.model, 1)
    return m.provenance()


# -- napari-facing ---------------------------------------------------------------------------


@read_guard.guarded  # a scope of its own when called from napari or a script
def upscale_to_store(
    array,
    out_path: Path | str,
    *,
    axes: str | None = None,
    scale=None,
    translate=None,
    model=None,
    name: str = "image",
    client=None,
    workers: int = 2,
    overwrite: bool = False,
    resume: bool = False,
    chunk: int = DEFAULT_CHUNK,
    halo: int = DEFAULT_HALO,
    **kw,
):
    """Upscale a numpy/dask/zarr-backed ``array`` into the OME-Zarr store ``out_path`` chunk by chunk
    and return the result's level 0 as a lazy dask array (for a napari layer).

    ``axes`` (NGFF letters, default the last two ``yx`` and ``c``/``z``/``t`` before them in NGFF
    order), ``scale``/``translate`` the source's layer geometry. Runs in-process threads unless a
    ``client`` is given (then ``array`` must be a zarr array or another picklable array).

    The stores ``array`` reads (a zarr array, or the zarr arrays in a dask graph) are recorded as
    inputs (:mod:`.read_guard`): ``out_path`` may not be, contain or lie inside one of them, even
    with ``overwrite=True``.
    """
    import dask.array as da

    from napari_rrim_sr.io.ngff import _parse_axes

    read_guard.register_array(array)

    shape = tuple(int(n) for n in array.shape)
    if axes is None:
        axes = "tczyx"[-len(shape) :] if len(shape) <= 5 else None
        if axes is None:
            raise InputError(f"an array of {len(shape)} dimensions needs axes")
    ax = _parse_axes(axes, len(shape))
    src = Source(
        Path(out_path).with_name(name),
        "object",
        "",
        shape,
        np.dtype(array.dtype),
        ax,
        [float(v) for v in (scale or [1.0] * len(shape))],
        [float(v) for v in (translate or [0.0] * len(shape))],
        tuple(getattr(array, "chunksize", shape)),
        name=name,
    )
    job = plan_job(src, out_path, model=model, chunk=chunk, halo=halo, array=array, **kw)
    job.source_kind, job.source_path, job.source_obj = "object", "", array
    run_job(job, src, client=client, workers=workers, overwrite=overwrite, resume=resume)
    return da.from_zarr(str(Path(out_path) / LEVEL0))


def _dump(job: ChunkJob) -> dict:  # for debugging / reports
    return asdict(job)
