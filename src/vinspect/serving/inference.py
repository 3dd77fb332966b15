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
import queue
import threading
import time
import warnings
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import BadInputError, ImageDecodeError

from .limits import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS  # noqa: E402,F401 (re-exported)
PIL_PIXEL_GUARD = 100_000_000  # vinspect.data.decode sets Image.MAX_IMAGE_PIXELS to this

# classes that mean "not damaged" unless --ok-class says otherwise
OK_CLASS_NAMES = {"intact", "ok", "good", "normal", "pass", "passed", "functional", "no_defect", "nodefect",
                  "no-defect", "non_defective", "non-defective", "defect_free", "defect-free", "undamaged"}


class Rejection(Exception):
    """A request the service refuses: HTTP status, a short code and a sentence naming the problem."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


class Busy(Exception):
    """The model queue is full."""


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
                 max_pixels: int = DEFAULT_MAX_PIXELS, predictor=None, precision: str | None = None):
        from ..models.predictor import load_predictor

        if workers < 1 or max_batch < 1 or max_queue < 1 or decode_workers < 1:
            raise BadInputError("--workers, --max-batch, --max-queue and --decode-workers must be at least 1")
        if max_bytes < 1:
            raise BadInputError(f"--max-bytes {max_bytes}: must be positive")
        if not 1 <= max_pixels <= PIL_PIXEL_GUARD:
            raise BadInputError(f"--max-pixels {max_pixels}: must be between 1 and {PIL_PIXEL_GUARD:,} "
                                f"(the decoder's decompression-bomb guard)")
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
        self._threads: list[threading.Thread] = []
        self._stopped = False

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
        for i in range(self.n_workers):
            t = threading.Thread(target=self._loop, name=f"vinspect-model-{i}", daemon=True)
            t.start()
            self._threads.append(t)

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

    def prepare(self, data: bytes) -> Prepared:
        """Check the limits, then decode exactly as at training time; :class:`Rejection` names the problem."""
        n = len(data)
        if n == 0:
            raise Rejection(400, "empty_body", "the image is empty (0 bytes)")
        if n > self.max_bytes:
            raise Rejection(413, "too_large", f"the image has {n:,} bytes, over the limit of {self.max_bytes:,}")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the pixel count is checked below
                with Image.open(io.BytesIO(data)) as im:  # reads the header only
                    w, h = im.size
                    fmt = im.format or "unknown"
                    media = Image.MIME.get(fmt, "application/octet-stream")
        except Image.DecompressionBombError:
            raise Rejection(413, "too_many_pixels", f"the image has too many pixels (over "
                                                    f"{2 * PIL_PIXEL_GUARD:,}; decompression bomb refused)") from None
        except UnidentifiedImageError:
            raise Rejection(400, "not_an_image", "the body is not a recognised image format") from None
        except (OSError, SyntaxError, ValueError, EOFError) as e:
            raise Rejection(400, "corrupt_image", f"corrupt or truncated image header ({e})") from None
        if w * h > self.max_pixels:
            raise Rejection(413, "too_many_pixels", f"the image is {w}x{h} = {w * h:,} pixels, over the limit of "
                                                    f"{self.max_pixels:,}")
        try:
            pixels = self.predictor.decode(data)
        except ImageDecodeError as e:
            code = "empty_body" if "0 bytes" in e.reason else "corrupt_image"
            raise Rejection(400, code, f"the image cannot be decoded: {e.reason}") from None
        return Prepared(pixels, hashlib.sha256(data).hexdigest(), n, fmt, media, w, h)

    def prepare_async(self, data: bytes) -> Future:
        return self._decode_pool.submit(self.prepare, data)

    def submit(self, pixels: np.ndarray) -> Future:
        """Queue one image for the model; a future of :class:`Verdict`.  :class:`Busy` when the queue is full."""
        if self._stopped:
            raise Busy("the service is stopping")
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
            try:
                preds = self.predictor.predict_pixels(np.stack([j.pixels for j in jobs]))
            except BaseException as e:  # noqa: BLE001 - handed to the waiting requests
                for j in jobs:
                    j.future.set_exception(future_safe(e))
                continue
            t1 = time.perf_counter()
            for j, p in zip(jobs, preds):
                j.future.set_result(Verdict(p.label, float(p.score), p.probabilities, (t1 - t0) * 1000,
                                            (t0 - j.enqueued) * 1000, dict(p.extra)))
