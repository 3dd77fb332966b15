"""The model behind the service: a predictor (any kind of model), a bounded decode pool and a bounded model pool.

Requests flow: bytes -> :meth:`InferenceService.prepare` (limits checked on the header before any pixel is
decoded, then the exact decoding and resizing the model was trained with) in a small decode pool ->
:meth:`InferenceService.submit` into a bounded queue -> model worker threads, each taking whatever is queued
(up to ``max_batch`` images) as one batch, so a busy line gets batched inference and an idle one gets no
added wait.  A full queue is refused at once (:class:`Busy`, HTTP 503) rather than growing without bound.
"""

from __future__ import annotations

import hashlib
import io
import logging
import queue
import threading
import time
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import BadInputError, ImageDecodeError
from .limits import (  # noqa: F401 (DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS re-exported)
    DEFAULT_DECODE_MEMORY,
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_PIXELS,
    MAX_ASPECT,
    MIN_RANGE,
    MIN_SIDE,
)

PIL_PIXEL_GUARD = 100_000_000  # vinspect.data.decode sets Image.MAX_IMAGE_PIXELS to this
log = logging.getLogger("vinspect.serving")

# classes that mean "not damaged" unless --ok-class says otherwise
OK_CLASS_NAMES = {"intact", "ok", "good", "normal", "pass", "passed", "functional", "no_defect", "nodefect",
                  "no-defect", "non_defective", "non-defective", "defect_free", "defect-free", "undamaged",
                  "background"}  # segment and detect models: nothing found


class Rejection(Exception):
    """A request the service refuses: HTTP status, a short code and a sentence naming the problem."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


class Busy(Exception):
    """The model queue is full."""


class DecodeBudget:
    """Bytes of memory that the decodes in flight may take together: a decode waits until its cost fits (at
    most ``timeout`` seconds: then 503), and one that alone exceeds the whole budget is refused (413)."""

    def __init__(self, total: int):
        self.total = int(total)
        self.used = 0
        self.peak = 0
        self._cond = threading.Condition()

    @contextmanager
    def hold(self, cost: int, timeout: float | None, what: str = "the image"):
        if cost > self.total:
            raise Rejection(413, "over_decode_memory", f"decoding {what} would take {cost / 2**20:,.0f} MiB, over "
                                                       f"the decode memory limit of {self.total / 2**20:,.0f} MiB")
        with self._cond:
            if not self._cond.wait_for(lambda: self.used + cost <= self.total, timeout):
                raise Rejection(503, "busy", "the decoders are busy with other large images; retry shortly")
            self.used += cost
            self.peak = max(self.peak, self.used)
        try:
            yield
        finally:
            with self._cond:
                self.used -= cost
                self._cond.notify_all()


@dataclass
class Prepared:
    """A decoded request image, ready for the model."""

    pixels: np.ndarray  # (S, S, 3) uint8 at the model's input size
    sha256: str
    n_bytes: int
    image_format: str
    media_type: str
    width: int
    height: int


@dataclass
class Verdict:
    label: str
    score: float
    probabilities: dict[str, float] | None
    model_ms: float  # time in the model worker (batch included)
    queue_ms: float  # time waiting in the queue
    extra: dict = field(default_factory=dict)  # what the kind of model adds (threshold, regions, boxes ...)


@dataclass
class _Job:
    pixels: np.ndarray
    future: Future
    enqueued: float = field(default_factory=time.perf_counter)


def bundle_sha256(directory: Path, files) -> str:
    """sha256 over the bundle's model.json and its files: identifies the exact model that gave a verdict."""
    h = hashlib.sha256()
    for name in ("model.json", *sorted(files)):
        h.update(name.encode() + b"\0")
        h.update((Path(directory) / name).read_bytes())
    return h.hexdigest()


def future_safe(e: BaseException) -> BaseException:
    """An exception an asyncio-wrapped future can carry: a StopIteration would leave the awaiting request
    hanging (asyncio refuses to set it), so it travels as a RuntimeError."""
    if isinstance(e, StopIteration):
        return RuntimeError(f"StopIteration in the model: {e!r}")
    return e


def run_safely(fn, *args):
    """``fn(*args)`` for a thread pool whose futures are awaited by asyncio (see :func:`future_safe`)."""
    try:
        return fn(*args)
    except StopIteration as e:
        raise future_safe(e) from None


class InferenceService:
    """A loaded predictor and the worker pools; thread-safe."""

    def __init__(self, model_dir, engine: str | None = None, weights=None, workers: int = 1, max_batch: int = 8,
                 max_queue: int = 64, decode_workers: int = 2, max_bytes: int = DEFAULT_MAX_BYTES,
                 max_pixels: int = DEFAULT_MAX_PIXELS, predictor=None, precision: str | None = None,
                 decode_memory: int = DEFAULT_DECODE_MEMORY):
        from ..models.predictor import load_predictor

        if workers < 1 or max_batch < 1 or max_queue < 1 or decode_workers < 1:
            raise BadInputError("--workers, --max-batch, --max-queue and --decode-workers must be at least 1")
        if max_bytes < 1:
            raise BadInputError(f"--max-bytes {max_bytes}: must be positive")
        if not 1 <= max_pixels <= PIL_PIXEL_GUARD:
            raise BadInputError(f"--max-pixels {max_pixels}: must be between 1 and {PIL_PIXEL_GUARD:,} "
                                f"(the decoder's decompression-bomb guard)")
        if decode_memory < 1:
            raise BadInputError(f"--decode-memory {decode_memory}: must be positive")
        self.model_dir = Path(model_dir)
        runtime = {"engine": engine, "weights": weights, "batch_size": max_batch}
        if precision:
            runtime["precision"] = precision
        self.predictor = predictor or load_predictor(self.model_dir, **runtime)
        self.bundle = self.predictor.bundle
        self.classes = self.predictor.classes
        self.engine_name = self.predictor.describe().get("engine", engine or "torch")
        self.max_bytes = int(max_bytes)
        self.max_pixels = int(max_pixels)
        self.max_batch = int(max_batch)
        self.n_workers = int(workers)
        self.sha256 = bundle_sha256(self.model_dir, self.bundle.files)
        self.name = str(self.bundle.config.get("name") or self.model_dir.resolve().name)
        self.version = str(self.bundle.config.get("version") or self.bundle.created_at or "")
        self._queue: queue.Queue[_Job | None] = queue.Queue(maxsize=max_queue)
        self._decode_pool = ThreadPoolExecutor(decode_workers, thread_name_prefix="vinspect-decode")
        self.decode_budget = DecodeBudget(decode_memory)
        self._threads: list[threading.Thread] = []
        self._threads_lock = threading.Lock()
        self._stopped = False
        self.restarts = 0  # model worker threads found dead and started again
        self._thumbs: OrderedDict[tuple[str, int], bytes] = OrderedDict()  # (sha256, max_size) -> JPEG
        self._thumbs_lock = threading.Lock()

    # -- life cycle -----------------------------------------------------------------------------------

    @property
    def model_info(self) -> dict:
        return {"name": self.name, "version": self.version, "sha256": self.sha256}

    def ok_classes(self, given: list[str] | None = None) -> list[str]:
        """The classes meaning "not damaged": ``given`` (checked), else those with a usual name (intact, ok ...)."""
        if given:
            unknown = [c for c in given if c not in self.classes]
            if unknown:
                raise BadInputError(f"--ok-class {', '.join(unknown)}: not a class of the model "
                                    f"({', '.join(self.classes)})")
            return list(given)
        return [c for c in self.classes if c.lower() in OK_CLASS_NAMES]

    def warm_up(self, rounds: int = 2) -> float:
        """Build the network and run the common batch sizes (the first runs of a shape are slow); seconds."""
        t0 = time.perf_counter()
        pre = self.predictor.preprocessing
        for n in sorted({n for n in (1, 2, 4) if n <= self.max_batch} | {self.max_batch}):
            for _ in range(rounds if n == 1 else 1):
                self.predictor.predict_pixels(np.zeros((n, pre.height, pre.width, 3), np.uint8))
        return time.perf_counter() - t0

    def start(self) -> None:
        with self._threads_lock:
            if not self._threads:
                for i in range(self.n_workers):
                    self._threads.append(self._spawn(i))

    def _spawn(self, i: int) -> threading.Thread:
        t = threading.Thread(target=self._worker, name=f"vinspect-model-{i}", daemon=True)
        t.start()
        return t

    def _worker(self) -> None:
        """A model worker: the batch loop, started again after anything that escapes it."""
        while not self._stopped:
            try:
                self._loop()
                return
            except BaseException:  # noqa: BLE001 - a dead worker would freeze every later request
                log.exception("model worker failed; restarting it")
                self.restarts += 1
                time.sleep(0.1)

    def ensure_workers(self) -> int:
        """Start again any model worker thread that has ended (it should not: this is the last resort);
        returns how many are alive."""
        with self._threads_lock:
            if not self._threads and not self._stopped:  # never started: a pool in use needs its workers
                for i in range(self.n_workers):
                    self._threads.append(self._spawn(i))
            if self._stopped:
                return sum(t.is_alive() for t in self._threads)
            for i, t in enumerate(self._threads):
                if not t.is_alive():
                    log.error("model worker %d was dead; started again", i)
                    self.restarts += 1
                    self._threads[i] = self._spawn(i)
            return sum(t.is_alive() for t in self._threads)

    def health(self) -> dict:
        alive = self.ensure_workers()
        return {"workers": self.n_workers, "workers_alive": alive, "worker_restarts": self.restarts,
                "queue_depth": self.queue_depth, "decode_memory_in_use": self.decode_budget.used}

    def stop(self, timeout: float = 10.0) -> None:
        if self._stopped:
            return
        self._stopped = True
        for _ in self._threads:
            self._queue.put(None)
        for t in self._threads:
            t.join(timeout)
        self._decode_pool.shutdown(wait=False, cancel_futures=True)

    @property
    def queue_depth(self) -> int:
        return self._queue.qsize()

    # -- the request path -----------------------------------------------------------------------------

    def header(self, data: bytes) -> tuple[int, int, str, str]:
        """(width, height, mode, format) of the image in ``data`` after the byte and pixel limits; no pixel is
        decoded.  :class:`Rejection` names the problem."""
        from ..data.decode import read_header

        n = len(data)
        if n == 0:
            raise Rejection(400, "empty_body", "the image is empty (0 bytes)")
        if n > self.max_bytes:
            raise Rejection(413, "too_large", f"the image has {n:,} bytes, over the limit of {self.max_bytes:,}")
        try:
            w, h, mode, fmt = read_header(data)
        except ImageDecodeError as e:
            if "decompression bomb" in e.reason:
                raise Rejection(413, "too_many_pixels", f"the image has too many pixels (over "
                                                        f"{2 * PIL_PIXEL_GUARD:,}; decompression bomb refused)") \
                    from None
            code = "not_an_image" if "not a recognised" in e.reason else "corrupt_image"
            detail = "the body is not a recognised image format" if code == "not_an_image" else e.reason
            raise Rejection(400, code, detail) from None
        if w * h > self.max_pixels:
            raise Rejection(413, "too_many_pixels", f"the image is {w}x{h} = {w * h:,} pixels, over the limit of "
                                                    f"{self.max_pixels:,}")
        return w, h, mode, fmt

    def prepare(self, data: bytes, timeout: float | None = 30.0) -> Prepared:
        """Check the limits, then decode exactly as at training time, within the decode memory budget (waiting
        at most ``timeout`` s for room); :class:`Rejection` names the problem."""
        from ..data.decode import decode_cost

        w, h, mode, fmt = self.header(data)
        if min(w, h) < MIN_SIDE or max(w, h) > MAX_ASPECT * min(w, h):
            raise Rejection(400, "degenerate_image", f"the image is {w}x{h} pixels: no verdict for an image with "
                                                     f"a side under {MIN_SIDE} pixels or sides in a ratio over "
                                                     f"{MAX_ASPECT:g}:1")
        pre = self.predictor.preprocessing
        cost = decode_cost(w, h, mode, fmt, min_size=max(int(pre.width), int(pre.height)))
        with self.decode_budget.hold(cost, timeout):
            try:
                pixels = self.predictor.decode(data)
            except ImageDecodeError as e:
                code = "empty_body" if "0 bytes" in e.reason else "corrupt_image"
                raise Rejection(400, code, f"the image cannot be decoded: {e.reason}") from None
        if int(pixels.max()) - int(pixels.min()) < MIN_RANGE:
            raise Rejection(400, "degenerate_image", f"the image is blank (every pixel within {MIN_RANGE - 1} grey "
                                                     f"level of {int(pixels.min())}): no verdict")
        media = Image.MIME.get(fmt, "application/octet-stream")
        return Prepared(pixels, hashlib.sha256(data).hexdigest(), len(data), fmt, media, w, h)

    def prepare_async(self, data: bytes, timeout: float | None = 30.0) -> Future:
        return self._decode_pool.submit(self.prepare, data, timeout)

    def thumbnail(self, data: bytes, max_size: int, sha256: str | None = None,
                  timeout: float | None = 30.0) -> bytes:
        """A JPEG of at most ``max_size`` pixels a side, decoded within the decode memory budget (JPEGs at a
        reduced DCT scale); the last 256 thumbnails are kept."""
        from ..data.decode import decode_cost, open_image

        key = (sha256 or hashlib.sha256(data).hexdigest(), int(max_size))
        with self._thumbs_lock:
            if key in self._thumbs:
                self._thumbs.move_to_end(key)
                return self._thumbs[key]
        w, h, mode, fmt = self.header(data)
        with self.decode_budget.hold(decode_cost(w, h, mode, fmt, min_size=max_size), timeout, "the thumbnail"):
            img = None
            if data[:3] == b"\xff\xd8\xff":
                try:
                    with Image.open(io.BytesIO(data)) as im:
                        if im.mode in ("RGB", "L"):
                            im.draft(im.mode, (max_size, max_size))
                            img = im.convert("RGB")
                except (OSError, ValueError):
                    img = None
            if img is None:
                try:
                    img = open_image(data)  # every other kind, decoded as for the model
                except ImageDecodeError as e:
                    raise Rejection(422, "undecodable", f"the stored image cannot be decoded: {e.reason}") \
                        from None
            img.thumbnail((max_size, max_size), Image.Resampling.BILINEAR)
            buf = io.BytesIO()
            img.save(buf, "JPEG", quality=85)
        out = buf.getvalue()
        with self._thumbs_lock:
            self._thumbs[key] = out
            while len(self._thumbs) > 256:
                self._thumbs.popitem(last=False)
        return out

    def thumbnail_async(self, data: bytes, max_size: int, sha256: str | None = None,
                        timeout: float | None = 30.0) -> Future:
        return self._decode_pool.submit(run_safely, self.thumbnail, data, max_size, sha256, timeout)

    def submit(self, pixels: np.ndarray) -> Future:
        """Queue one image for the model; a future of :class:`Verdict`.  :class:`Busy` when the queue is full."""
        if self._stopped:
            raise Busy("the service is stopping")
        self.ensure_workers()
        job = _Job(pixels, Future())
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            raise Busy(f"{self._queue.maxsize} images already wait for the model") from None
        return job.future

    def predict(self, pixels: np.ndarray, timeout: float | None = 60) -> Verdict:
        """Synchronous convenience: submit and wait."""
        return self.submit(pixels).result(timeout)

    def _loop(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            jobs = [job]
            while len(jobs) < self.max_batch:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:  # stopping: finish this batch, then leave
                    self._queue.put(None)
                    break
                jobs.append(nxt)
            jobs = [j for j in jobs if j.future.set_running_or_notify_cancel()]
            if not jobs:
                continue
            t0 = time.perf_counter()
            try:  # everything that may fail, so that no waiting request is left without an answer
                preds = list(self.predictor.predict_pixels(np.stack([j.pixels for j in jobs])))
                if len(preds) != len(jobs):
                    raise RuntimeError(f"the model gave {len(preds)} predictions for {len(jobs)} images")
                t1 = time.perf_counter()
                verdicts = [Verdict(str(p.label), float(p.score), p.probabilities, (t1 - t0) * 1000,
                                    (t0 - j.enqueued) * 1000, dict(p.extra)) for j, p in zip(jobs, preds)]
            except BaseException as e:  # noqa: BLE001 - handed to the waiting requests
                for j in jobs:
                    j.future.set_exception(future_safe(e))
                continue
            for j, v in zip(jobs, verdicts):
                j.future.set_result(v)
