"""One batch run on a Ray cluster: the jobs (what each worker computes), the actor, the Parquet sink, the driver.

Output folder ``OUT``::

    OUT/part-<run>-<k>.parquet   one row per input (path, sha256, ...), each file written whole then renamed
    OUT/_job.json                what the rows were computed with (a re-run with other settings is refused)
    OUT/_summary.json            the last run: counts, seconds, images/s, per-node counts
    OUT/_lock                    one run at a time per folder

``pyarrow.parquet.read_table(OUT)`` (or pandas, Spark, DuckDB ...) reads the folder as one table; names starting
with ``_`` or ``.`` are not part of it.  Rows are in completion order, not input order.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
import uuid
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..errors import BadInputError, ImageDecodeError

JOB_FILE = "_job.json"
SUMMARY_FILE = "_summary.json"
LOCK_FILE = "_lock"
PART_GLOB = "part-*.parquet"
FORMAT_VERSION = 1
START_TIMEOUT_S = 900  # for the workers to start and load the model
MAX_BLOCKS = 20_000  # blocks of input paths handed to Ray Data (each one object in the store)
ADDRESS_HELP = ("ADDRESS joins a running cluster (host:port of its head), auto the one in $RAY_ADDRESS or started "
                "on this machine with 'ray start', local a throw-away Ray instance on this machine for this run")


def need_ray():
    """Ray (with Ray Data) and pyarrow, or one line saying how to install them."""
    try:
        import pyarrow  # noqa: F401
        import ray
        import ray.data
    except ImportError as e:
        raise BadInputError(f"--ray needs Ray Data and pyarrow ({e}): pip install 'vinspect[ray]'") from None
    return ray


# -- what the workers compute --------------------------------------------------------------------------------


@dataclass
class PredictJob:
    """``vinspect predict --ray``: a bundle of any task; rows hold ``label`` and ``score`` and, for models that give
    them, ``probabilities`` (in the order of ``classes``, stored in the files' metadata)."""

    model: str                      # the bundle folder, at the same path on every node
    runtime: dict = field(default_factory=dict)   # engine, precision, weights, batch_size (load_predictor's)
    classes: list = field(default_factory=list)
    task: str = ""
    model_sha256: str = ""

    kind = "predict"

    @classmethod
    def from_model(cls, model, **runtime) -> PredictJob:
        from ..models.bundle import load_bundle

        model = os.path.abspath(str(model))
        b = load_bundle(model)  # validates the bundle (and its files' sha256) before any worker starts
        sha = hashlib.sha256((Path(model) / "model.json").read_bytes()).hexdigest()
        return cls(model, {k: v for k, v in runtime.items() if v is not None}, list(b.classes), b.task, sha)

    def identity(self) -> dict:
        return {"kind": "predict", "model_json_sha256": self.model_sha256, "task": self.task,
                "engine": self.runtime.get("engine"), "precision": self.runtime.get("precision")}

    def schema(self):
        import pyarrow as pa

        return pa.schema([("path", pa.string()), ("sha256", pa.string()), ("label", pa.string()),
                          ("score", pa.float64()), ("probabilities", pa.list_(pa.float64())), ("error", pa.string())],
                         metadata={"vinspect": json.dumps({"job": self.identity(), "classes": self.classes})})

    # worker side
    def load(self) -> None:
        from ..models.predictor import load_predictor

        self._predictor = load_predictor(self.model, **self.runtime)

    def decode(self, data: bytes) -> np.ndarray:
        return self._predictor.decode(data)

    def compute(self, pixels: np.ndarray) -> dict:
        preds = self._predictor.predict_pixels(pixels)
        return {"label": [p.label for p in preds], "score": [float(p.score) for p in preds],
                "probabilities": [None if p.probabilities is None else [float(p.probabilities[c]) for c in self.classes]
                                  for p in preds]}


@dataclass
class ExtractJob:
    """``vinspect classify extract --ray``: pooled CNN features; rows hold the class folder as ``label`` and the
    ``features`` (float32)."""

    extractor: dict                 # Extractor's keyword arguments
    classes: list = field(default_factory=list)
    meta: dict = field(default_factory=dict)

    kind = "extract"

    @classmethod
    def from_options(cls, classes, **extractor) -> ExtractJob:
        from ..features.extract import Extractor

        ex = Extractor(**extractor)  # validates the options and knows the settings that shape the features
        return cls(dict(extractor), list(classes), ex.meta)

    def identity(self) -> dict:
        return {"kind": "extract", "features": self.meta}

    def schema(self):
        import pyarrow as pa

        return pa.schema([("path", pa.string()), ("sha256", pa.string()), ("label", pa.string()),
                          ("features", pa.list_(pa.float32())), ("error", pa.string())],
                         metadata={"vinspect": json.dumps({"job": self.identity(), "classes": self.classes})})

    def load(self) -> None:
        from ..features.extract import Extractor

        self._extractor = Extractor(**self.extractor)
        _ = self._extractor.engine

    def decode(self, data: bytes) -> np.ndarray:
        return self._extractor.decode(data)

    def compute(self, pixels: np.ndarray) -> dict:
        return {"features": list(np.asarray(self._extractor.features(pixels), np.float32))}


class BatchWorker:
    """A Ray Data actor: the model is loaded once; each call reads, hashes, decodes and runs one batch.

    A file that cannot be read or decoded gets a row with ``error`` set (so every input has exactly one row)."""

    def __init__(self, job, threads: int = 1):
        os.environ.setdefault("VINSPECT_THREADS", str(max(1, int(threads))))
        try:
            import torch

            torch.set_num_threads(max(1, int(threads)))
        except ImportError:
            pass
        import ray

        self.node = ray.get_runtime_context().get_node_id()
        self.job = job
        job.load()

    def __call__(self, batch):
        import pyarrow as pa

        paths = batch.column("path").to_pylist()
        labels = batch.column("label").to_pylist() if "label" in batch.column_names else [None] * len(paths)
        shas, errors, pixels = [], [], []
        for p in paths:
            try:
                data = Path(p).read_bytes()
            except OSError as e:
                shas.append(None)
                errors.append(f"unreadable ({e.strerror or e})")
                continue
            shas.append(hashlib.sha256(data).hexdigest())
            try:
                pixels.append(self.job.decode(data))
                errors.append(None)
            except ImageDecodeError as e:
                errors.append(e.reason)
        ok = [i for i, e in enumerate(errors) if e is None]
        out = self.job.compute(np.stack(pixels)) if ok else {}
        schema = self.job.schema()
        cols: dict[str, list] = {"path": paths, "sha256": shas, "error": errors}
        for name in schema.names:
            if name in cols:
                continue
            if name == "label" and self.job.kind == "extract":
                cols[name] = labels
                continue
            col = [None] * len(paths)
            for j, i in enumerate(ok):
                col[i] = out[name][j]
            cols[name] = col
        table = pa.table({n: pa.array(cols[n], type=schema.field(n).type) for n in schema.names}, schema=schema)
        return table.append_column("node", pa.array([self.node] * len(paths), pa.string()))


def _worker_class(job, threads: int):
    """The actor class with the job built in: it travels with the class definition, not as constructor arguments
    in the object store (which a restarted actor could find gone)."""

    class Worker(BatchWorker):
        def __init__(self):
            super().__init__(job, threads)

    return Worker


# -- the output folder ---------------------------------------------------------------------------------------


class ParquetSink:
    """Rows -> ``part-*.parquet`` files of at most ``rows_per_file`` rows, each written to a hidden temporary file
    and renamed (a file is whole or absent); a file is also closed after ``flush_seconds`` so that an interrupted
    run keeps its work.  ``done`` holds every path already written (earlier runs included): rows for those are
    dropped, so each path appears once."""

    def __init__(self, out, schema, identity: dict, rows_per_file: int = 8192, flush_seconds: float = 60.0):
        import pyarrow.parquet as pq
        from filelock import FileLock, Timeout

        self.out = Path(out)
        if self.out.exists() and not self.out.is_dir():
            raise BadInputError(f"--out {self.out}: not a directory")
        self.out.mkdir(parents=True, exist_ok=True)
        self._lock = FileLock(str(self.out / LOCK_FILE))
        try:
            self._lock.acquire(timeout=0)
        except Timeout:
            raise BadInputError(f"--out {self.out}: another run is writing there") from None
        self.schema, self.rows_per_file, self.flush_seconds = schema, int(rows_per_file), float(flush_seconds)
        job_file = self.out / JOB_FILE
        parts = sorted(self.out.glob(PART_GLOB))
        if job_file.exists():
            try:
                old = json.loads(job_file.read_text()).get("job")
            except (OSError, ValueError, AttributeError) as e:
                self.close()
                raise BadInputError(f"{job_file}: unreadable ({e}); choose another --out") from None
            if old != identity:
                self.close()
                raise BadInputError(f"--out {self.out}: holds results computed with other settings or another model "
                                    f"({JOB_FILE} differs); choose another folder")
        elif parts:
            self.close()
            raise BadInputError(f"--out {self.out}: holds Parquet files that vinspect did not write ({JOB_FILE} is "
                                "missing); choose another folder")
        else:
            _write_json(job_file, {"format_version": FORMAT_VERSION, "job": identity})
        for tmp in self.out.glob(".part-*.tmp"):  # left by a run that stopped while writing: its rows are not done
            tmp.unlink(missing_ok=True)
        self.done: set[str] = set()
        for f in parts:
            try:
                self.done.update(pq.read_table(f, columns=["path"]).column("path").to_pylist())
            except Exception as e:  # noqa: BLE001 - a damaged file is named, not guessed around
                self.close()
                raise BadInputError(f"{f}: unreadable Parquet file ({type(e).__name__}: {e}); delete it to recompute "
                                    "its rows") from None
        self.n_before = len(self.done)
        self.run_id = time.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]
        self.files: list[Path] = []
        self.n_written = 0
        self.duplicates_dropped = 0
        self._buf: list = []
        self._buf_rows = 0
        self._last_flush = time.monotonic()

    def write(self, table) -> list[int]:
        """Keep the rows of ``table`` whose path is new; returns their positions."""
        import pyarrow as pa

        paths = table.column("path").to_pylist()
        keep = []
        for i, p in enumerate(paths):
            if p in self.done:
                self.duplicates_dropped += 1
            else:
                self.done.add(p)
                keep.append(i)
        if keep:
            t = table.select(self.schema.names)
            if len(keep) < len(paths):
                t = t.take(pa.array(keep, pa.int64()))
            self._buf.append(t.cast(self.schema))
            self._buf_rows += len(keep)
        if self._buf_rows >= self.rows_per_file or (self._buf and time.monotonic() - self._last_flush
                                                    >= self.flush_seconds):
            self.flush()
        return keep

    def flush(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        self._last_flush = time.monotonic()
        if not self._buf:
            return
        table = pa.concat_tables(self._buf)
        self._buf, self._buf_rows = [], 0
        name = f"part-{self.run_id}-{len(self.files):05d}.parquet"
        tmp = self.out / f".{name}.tmp"
        pq.write_table(table, tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, self.out / name)
        self.files.append(self.out / name)
        self.n_written += table.num_rows

    def close(self) -> None:
        try:
            self.flush() if hasattr(self, "_buf") else None
        finally:
            self._lock.release()


def _write_json(path: Path, obj) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    os.replace(tmp, path)


def read_results(out):
    """The whole output folder as one pyarrow table (rows in completion order)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    parts = sorted(Path(out).glob(PART_GLOB))
    if not parts:
        raise BadInputError(f"{out}: no results (no {PART_GLOB} files)")
    return pa.concat_tables([pq.read_table(p) for p in parts])


# -- the driver ----------------------------------------------------------------------------------------------


@dataclass
class RunSummary:
    out: str
    n_inputs: int                   # inputs given (after listing the files)
    n_already: int                  # inputs whose rows an earlier run wrote (skipped)
    n_written: int                  # rows written by this run
    n_errors: int                   # rows of this run with an error (unreadable / undecodable files)
    duplicates_dropped: int         # rows that came back twice (a retried block) and were dropped
    seconds: float                  # from the first block handed to Ray to the last row written
    images_per_second: float | None
    workers: int
    cluster_cpus: float
    per_node: dict = field(default_factory=dict)   # node -> {"address", "images"}
    files: list = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)


def _node_names(ray) -> dict[str, str]:
    names = {}
    for n in ray.nodes():
        host = n.get("NodeManagerHostname") or "?"
        names[n["NodeID"]] = f"{n.get('NodeManagerAddress', '?')}:{n.get('NodeManagerPort', '?')} ({host})"
    return names


@contextmanager
def connect(address: str, num_cpus: int | None = None):
    """Ray connected to ``address`` (see ADDRESS_HELP) for the duration; ``local`` starts and then stops a
    private instance.  An already initialised Ray (the caller's own) is used as it is."""
    ray = need_ray()
    if ray.is_initialized():
        yield ray
        return
    kw = {"logging_level": logging.WARNING, "log_to_driver": False}
    if address == "local":  # private, on a loopback address (Ray replaces 127.0.0.1 by the network address)
        kw.update(address="local", include_dashboard=False, num_cpus=num_cpus, _node_ip_address="127.0.0.2")
    elif address == "auto":
        kw["address"] = os.environ.get("RAY_ADDRESS") or "auto"
    else:
        kw["address"] = address
    host = str(kw["address"]).rsplit("//", 1)[-1].rsplit(":", 1)[0]
    if host.startswith("127.") and host != "127.0.0.1":  # a cluster on loopback: this driver joins it there too
        kw["_node_ip_address"] = host
    try:
        ray.init(**kw)
    except (ConnectionError, ValueError, RuntimeError) as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise BadInputError(f"--ray {address}: cannot connect to a Ray cluster ({msg})") from None
    try:
        yield ray
    finally:
        ray.shutdown()


def run(job, inputs, out, address: str = "auto", *, batch_size: int = 32, cpus_per_worker: int = 1,
        workers: int | None = None, rows_per_file: int = 8192, flush_seconds: float = 60.0,
        progress: bool = True, on_batch=None, num_cpus: int | None = None) -> RunSummary:
    """Compute ``job`` for every input on the Ray cluster at ``address`` into the Parquet folder ``out``.

    ``inputs``: image paths, or ``(path, label)`` pairs (extraction keeps the class folder as ``label``); paths
    are made absolute here and must name the same files on every node.  Inputs already in ``out`` are skipped.
    ``workers``: actors holding the model (default: the cluster's CPUs // ``cpus_per_worker``).
    ``on_batch(rows_written_so_far, per_node_counts)`` is called after each batch that comes back.
    ``num_cpus``: cores of a ``local`` instance (default: all)."""
    if batch_size < 1:
        raise BadInputError(f"--batch-size {batch_size}: must be at least 1")
    if cpus_per_worker < 1:
        raise BadInputError(f"cpus per worker {cpus_per_worker}: must be at least 1")
    pairs = [(os.path.abspath(str(i[0])), i[1]) if isinstance(i, (tuple, list)) else (os.path.abspath(str(i)), None)
             for i in inputs]
    if not pairs:
        raise BadInputError("no image files to process")
    if len({p for p, _ in pairs}) != len(pairs):
        seen, pairs_unique = set(), []
        for p, lab in pairs:
            if p not in seen:
                seen.add(p)
                pairs_unique.append((p, lab))
        pairs = pairs_unique
    need_ray()
    sink = ParquetSink(out, job.schema(), job.identity(), rows_per_file, flush_seconds)
    try:
        todo = [(p, lab) for p, lab in pairs if p not in sink.done]
        n_already = len(pairs) - len(todo)
        if not todo:
            summary = RunSummary(str(out), len(pairs), n_already, 0, 0, 0, 0.0, None, 0, 0.0)
            _write_json(Path(out) / SUMMARY_FILE, summary.as_dict())
            return summary
        with connect(address, num_cpus) as ray:
            summary = _execute(ray, job, todo, sink, batch_size, cpus_per_worker, workers, progress, on_batch)
        summary.n_inputs, summary.n_already = len(pairs), n_already
    finally:
        sink.close()
    summary.files = [p.name for p in sink.files]
    summary.n_written = sink.n_written
    _write_json(Path(out) / SUMMARY_FILE, summary.as_dict())
    return summary


def _execute(ray, job, todo, sink: ParquetSink, batch_size, cpus_per_worker, workers, progress, on_batch):
    import pyarrow as pa
    from tqdm.auto import tqdm

    logging.getLogger("ray.data").setLevel(logging.ERROR)  # progress and notices: ours say it
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # ours counts images across the cluster
    ctx.print_on_execution_start = False
    # every worker has loaded its model before the first block is handed out (so that all nodes share the work);
    # a cluster that cannot place them all in this time fails with Ray's "Timed out while starting actors"
    ctx.wait_for_min_actors_s = START_TIMEOUT_S
    cpus = float(ray.cluster_resources().get("CPU", 0))
    largest = max([float(n.get("Resources", {}).get("CPU", 0)) for n in ray.nodes() if n.get("Alive")] or [0.0])
    if largest < cpus_per_worker:  # no node could ever hold a worker: Ray would wait for one forever
        raise BadInputError(f"--ray-cpus {cpus_per_worker}: no node of the cluster has that many CPUs (the largest "
                            f"has {largest:g})")
    if workers is None:
        workers = max(1, int(cpus // cpus_per_worker))
    paths = [p for p, _ in todo]
    labels = [lab for _, lab in todo]
    # one block per batch (a lost worker costs one batch), but at most MAX_BLOCKS objects for a huge file list
    rows = batch_size * max(1, -(-len(paths) // (batch_size * MAX_BLOCKS)))
    blocks = [pa.table({"path": pa.array(paths[i:i + rows], pa.string()),
                        "label": pa.array(labels[i:i + rows], pa.string())})
              for i in range(0, len(paths), rows)]
    ds = ray.data.from_arrow(blocks).map_batches(
        _worker_class(job, cpus_per_worker), batch_size=batch_size,
        batch_format="pyarrow", num_cpus=cpus_per_worker, compute=ray.data.ActorPoolStrategy(size=workers))
    per_node: dict[str, int] = {}
    n_errors = 0
    t0 = time.perf_counter()
    with tqdm(total=len(paths), desc=f"ray {job.kind}", unit="img", disable=not progress, smoothing=0.1) as bar:
        for table in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
            nodes = table.column("node").to_pylist()
            errs = table.column("error").to_pylist()
            keep = sink.write(table)
            for i in keep:
                per_node[nodes[i]] = per_node.get(nodes[i], 0) + 1
                n_errors += errs[i] is not None
            kept = len(keep)
            bar.update(kept)
            bar.set_postfix(nodes=len(per_node), refresh=False)
            if on_batch is not None:
                on_batch(sum(per_node.values()), dict(per_node))
    seconds = time.perf_counter() - t0
    missing = [p for p in paths if p not in sink.done]
    if missing:
        raise RuntimeError(f"{len(missing)} inputs came back from no worker (first: {missing[0]})")
    names = _node_names(ray)
    n = sum(per_node.values())
    return RunSummary(str(sink.out), 0, 0, 0, n_errors, sink.duplicates_dropped, seconds,
                      n / seconds if seconds > 0 else None, workers, cpus,
                      {nd: {"address": names.get(nd, "?"), "images": c} for nd, c in sorted(per_node.items())})
