"""Chunk-by-chunk, resumable upscaling of data larger than memory into an OME-Zarr store.

Why not ``upscale_dask(...).to_zarr()``: a killed dask graph leaves no record of what was
finished, and its memory is the scheduler's to bound. Here every output chunk is one task:

1. read the input block plus a ``halo`` of real neighbour pixels (read-only store);
2. upscale it with the public engine call :func:`napari_rrim_sr.engine.upscale` and crop the
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
:class:`~napari_rrim_sr.normalize.Normalization`, so level 0 equals the in-memory
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
import shutil
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor
from concurrent.futures import wait as _futures_wait
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InputError, OutputError, WeightsError
from .ngff import Source, open_array
from .safe_write import check_target, fsync_path

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

    def grid(self) -> list[tuple[int, ...]]:
        """Chunk indices (one per output chunk of level 0)."""
        ranges = []
        for a, n in enumerate(self.in_shape):
            ranges.append(range(-(-n // self.block)) if a in self.spatial else range(n))
        return list(itertools.product(*ranges))

    def settings(self) -> dict:
        """What determines the result: a resume must match it exactly."""
        from .jsonable import jsonable

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
    with open(tmp, "w") as fh:
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
    from . import engine

    kw = {k: job.engine_kw[k] for k in ("device", "precision", "threads", "self_ensemble") if k in job.engine_kw}
    up = engine.get_upscaler(job.model, channels=1, **kw)  # the engine's per-process cache
    if up.model.sha256 != job.model_sha256:
        raise WeightsError(
            job.model, f"has sha256 {up.model.sha256} on this worker, the job expects {job.model_sha256}"
        )
    _VERIFIED.add(key)


def process_chunk(job: ChunkJob, idx: tuple[int, ...]) -> dict:
    """Compute, write and mark one output chunk of level 0; returns a small record."""
    import resource

    import zarr

    from . import engine

    t0 = time.perf_counter()
    c0 = time.process_time()
    _check_model(job)
    if job.source_obj is not None:
        src = job.source_obj
    else:
        src = _cached(
            ("in", job.source_kind, job.source_path, job.source_array),
            lambda: open_array(job.source_kind, job.source_path, job.source_array, job.source_series),
        )
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
    from .memory import available_memory, format_bytes, output_nbytes

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

    from . import engine
    from .normalize import compute_normalization

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
    lazy = arr if type(arr).__module__.startswith("dask") else da.from_array(arr, chunks=_read_chunks(src))
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
    from .model_choice import choose_for_layer, installed_weight_ids

    choice = choose_for_layer(arr, rgb=False, spatial_axes=src.spatial, available_ids=installed_weight_ids())
    return choice.weights_id


def _read_chunks(src: Source) -> tuple:
    return tuple(max(c, 1) for c in src.chunks) if src.chunks else "auto"


# -- running -------------------------------------------------------------------------------


def open_scheduler(spec: str | None, *, memory_limit: str | None = None):
    """``(client, closer, n_workers)`` for ``None``/"threads" (in-process threads: client None),
    ``"local:N"`` (a LocalCluster of N single-threaded worker processes) or a scheduler address."""
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
        cluster = distributed.LocalCluster(
            n_workers=n,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=None,
            silence_logs=40,
            memory_limit=memory_limit or "auto",
        )
        client = distributed.Client(cluster)

        def close():
            client.close()
            cluster.close()

        return client, close, n
    try:
        client = distributed.Client(spec, timeout=30)
    except Exception as exc:  # noqa: BLE001
        raise InputError(f"--scheduler {spec}: cannot connect ({type(exc).__name__}: {exc})") from None
    n = max(1, len(client.scheduler_info().get("workers", {})))
    return client, client.close, n


def _pending_chunks(job: ChunkJob) -> list[tuple[int, ...]]:
    return [idx for idx in job.grid() if _read_marker(marker_path(job.out_path, idx)) is None]


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


def prepare_output(
    job: ChunkJob, *, overwrite: bool = False, resume: bool = False, protect: Iterable = (), command: str | None = None
) -> None:
    """Create the output store and job record, or check a resumable one (same settings)."""
    from .jsonable import jsonable
    from .safe_write import atomic_write

    out = Path(job.out_path)
    protect = [Path(p) for p in protect]
    for src in protect:
        if out.resolve() == src.resolve() or _inside(out, src) or _inside(src, out):
            raise OutputError(out, f"is or overlaps the input {src}; it is never written, even with --overwrite")
    rec_path = out / JOB_FILE
    if resume and out.exists():
        try:
            rec = json.loads(rec_path.read_text())
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
        return
    check_target(out, overwrite=overwrite, protect=protect, kind="dir")
    if out.exists():  # --overwrite, checked above: never an input, never containing one
        shutil.rmtree(out)
    _create_store(job)
    rec = {
        "settings": job.settings(),
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
    chunks: list[tuple[int, ...]],
    *,
    client=None,
    workers: int = 2,
    max_in_flight: int | None = None,
):
    """Generator: run ``chunks`` on ``client`` (dask.distributed) or in-process threads, bounded
    in flight, yielding ``(done, total)`` after each finished chunk; returns the records.
    Closing it (cancel) cancels the chunks not started and waits for the running ones: every
    finished chunk keeps its marker, so a later ``resume`` continues from there."""
    limit = max_in_flight or max(2, 2 * workers)
    records: list[dict] = []
    todo = list(chunks)
    pool = ThreadPoolExecutor(max_workers=max(1, workers)) if client is None else None
    job_ref = client.scatter(job, broadcast=True) if client is not None else job
    pending: set = set()
    try:
        while todo or pending:
            while todo and len(pending) < limit:
                idx = todo.pop(0)
                if client is None:
                    pending.add(pool.submit(process_chunk, job, idx))
                else:
                    pending.add(client.submit(process_chunk, job_ref, idx, pure=False, retries=1))
            done, pending = _wait_first(client, pending)
            pending = set(pending)
            for f in done:
                records.append(f.result())
                yield len(records), len(chunks)
    finally:
        for f in pending:
            f.cancel()
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
    return records


def run_chunks(
    job: ChunkJob,
    chunks: list[tuple[int, ...]],
    *,
    client=None,
    workers: int = 2,
    progress: Callable[[int, int], Any] | None = None,
    max_in_flight: int | None = None,
) -> list[dict]:
    """:func:`run_chunks_iter` to its end; ``progress(done, total)`` after each chunk."""
    from .progress import drain

    gen = run_chunks_iter(job, chunks, client=client, workers=workers, max_in_flight=max_in_flight)
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
    from . import __version__
    from .ngff import write_result_metadata
    from .progress import Progress

    protect = [*([src.path] if src.kind != "object" else []), *protect]
    prepare_output(job, overwrite=overwrite, resume=resume, protect=protect, command=command)
    out = Path(job.out_path)
    grid = job.grid()
    todo = _pending_chunks(job)
    n = len(grid)
    skipped = n - len(todo)
    t0 = time.perf_counter()
    yield Progress(skipped, n, 0, 1, f"{skipped} of {n} chunks already done" if skipped else "starting")
    gen = run_chunks_iter(job, todo, client=client, workers=workers)
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
                "method": "model, chunk by chunk (napari_rrim_sr.chunked)",
                "model": _model_provenance(job),
            }
        )
        prov.update(
            {
                "created": rec.get("created"),
                "completed": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                "command": command or rec.get("command"),
                "chunked": "chunk by chunk (napari_rrim_sr.chunked)",
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
                "chunks": len(grid),
                "chunk_shape": list(job.out_chunks),
                **(provenance_extra or {}),
            }
        )
        write_result_metadata(out, src, job.scale, paths, prov)
        _write_marker(complete, {"sha256": "", "levels": paths})
    return {
        "chunks": len(grid),
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
    ``progress``/``cancel`` as :func:`napari_rrim_sr.progress.drain`; ``quiet=False``: a bar.
    """
    from .progress import drain

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
    from .progress import drain_with_bar

    return drain_with_bar(gen, src.name, unit="chunk", progress=progress, cancel=cancel)


def _model_provenance(job: ChunkJob) -> dict:
    from . import engine

    m = job.model.get() if isinstance(job.model, engine.ModelRef) else engine.resolve_model(job.model, 1)
    return m.provenance()


# -- napari-facing ---------------------------------------------------------------------------


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
    """
    import dask.array as da

    from .ngff import _parse_axes

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
