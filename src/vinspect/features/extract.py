"""Extraction: dataset -> (cached) pooled features, streamed batch by batch with a progress bar."""

from __future__ import annotations

import os
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import h5py
import numpy as np
from tqdm.auto import tqdm

from ..backbones.registry import DEFAULT_BACKBONE, get_spec
from ..data.dataset import Dataset, Skipped, file_sha256
from ..data.decode import load_rgb
from ..errors import BadInputError, ImageDecodeError
from .cache import FeatureCache, cache_key, default_cache_dir
from ..backbones.pooling import POOLS


ENGINES = ("torch", "onnx")  # the choices of every command's --engine
DEFAULT_ENGINE = "torch"
PRECISIONS = (None, "fp32")  # --precision; None: the engine's own
QUANTIZE = (None, "int8")


def _default_workers() -> int:
    return max(1, min(4, os.cpu_count() or 1))


class Extractor:
    """The settings of one feature extraction, and the engine, built on first use.

    Knowing the cache key needs no network and no model: a fully cached run never imports torch.
    """

    def __init__(self, backbone: str = DEFAULT_BACKBONE, layer: str | None = None, pool: str = "avg",
                 image_size: int | None = None, resize: str = "squash", weights: str | Path | None = None,
                 random_init: bool = False, batch_size: int = 32, workers: int | None = None,
                 device: str | None = None, engine: str = "torch", quantize: str | None = None,
                 onnx_dir: str | Path | None = None, calibration=None, onnx_file: str | Path | None = None,
                 precision: str | None = None):
        self.spec = get_spec(backbone)
        self.backbone = backbone
        self.layer = layer or self.spec.default_layer
        if not self.layer:
            raise BadInputError(f"backbone {backbone!r} has no default layer: choose one with --layer "
                                f"(see: vinspect layers {backbone})")
        if pool not in POOLS:
            raise BadInputError(f"--pool {pool!r}: use one of {', '.join(POOLS)}")
        if resize not in ("squash", "letterbox"):
            raise BadInputError(f"--resize {resize!r}: use squash or letterbox")
        if image_size is not None and not 16 <= int(image_size) <= 2048:
            raise BadInputError(f"--image-size {image_size}: must be between 16 and 2048")
        if batch_size < 1:
            raise BadInputError(f"--batch-size {batch_size}: must be at least 1")
        if engine not in ENGINES:
            raise BadInputError(f"--engine {engine!r}: use one of {', '.join(ENGINES)}")
        if precision not in PRECISIONS:
            raise BadInputError(f"--precision {precision!r}: use one of {', '.join(p for p in PRECISIONS if p)}")
        self.precision = precision
        if quantize not in QUANTIZE:
            raise BadInputError(f"--quantize {quantize!r}: use int8")
        if quantize and engine != "onnx":
            raise BadInputError("--quantize int8 needs --engine onnx")
        self.engine_name = engine
        self.quantize = quantize
        self.onnx_dir = Path(onnx_dir) if onnx_dir else None
        self.calibration = calibration  # callable -> uint8 images, used once to quantise
        self.onnx_file = Path(onnx_file) if onnx_file else None  # a ready exported model (e.g. in a bundle)
        self.pool = pool
        self.preprocessing = replace(self.spec.preprocessing,
                                     input_size=int(image_size or self.spec.preprocessing.input_size), resize=resize)
        self.weights = weights
        self.random_init = random_init
        self.batch_size = int(batch_size)
        self.workers = workers or _default_workers()
        self.device = device
        self._engine = None
        self._loaded = None
        self.weights_sha256, self.weights_path = self._weights_identity()

    def _weights_identity(self) -> tuple[str | None, str | None]:
        if self.weights is not None:
            p = Path(self.weights).expanduser()
            if not p.is_file():
                raise BadInputError(f"--weights {p}: no such file")
            return file_sha256(p), str(p.resolve())
        if self.random_init:
            return None, None
        if self.spec.weights is not None:
            p = self.spec.weights.path()
            return file_sha256(p), str(p)
        self._build()  # timm cache: resolving it needs timm
        return self._loaded.weights_sha256, self._loaded.weights_path

    def _build(self):
        if self._loaded is None:
            from ..backbones.build import create_backbone

            if self.random_init:
                import torch

                torch.manual_seed(0)  # a reproducible untrained network
            self._loaded = create_backbone(self.backbone, self.weights, self.random_init)
        return self._loaded

    def torch_net(self):
        """The torch module uint8 NHWC -> features (normalisation, backbone cut at the layer, pooling)."""
        from .torch_engine import FeatureNet

        return FeatureNet(self._build(), self.layer, self.pool, self.preprocessing).eval()

    @property
    def onnx_path(self) -> Path:
        if self.onnx_file is not None:
            return self.onnx_file
        d = self.onnx_dir or (default_cache_dir() / "onnx")
        return d / f"{cache_key(self.meta)}.onnx"

    @property
    def engine(self):
        if self._engine is None:
            if self.engine_name == "onnx":
                from .onnx_engine import OnnxEngine

                self._engine = OnnxEngine(self.onnx_path, self.torch_net, self.preprocessing.input_size,
                                          quantize=self.quantize, calibration=self.calibration)
            else:
                from .torch_engine import TorchEngine

                self._engine = TorchEngine(self._build(), self.layer, self.pool, self.preprocessing, self.device)
        return self._engine

    @property
    def meta(self) -> dict:
        """The settings that determine the features (the cache key).  torch and fp32 onnx engines agree to
        1e-5 and share a cache; int8 features differ and get their own."""
        m = {"backbone": self.backbone, "arch": self.spec.arch, "layer": self.layer, "pool": self.pool,
             "preprocessing": self.preprocessing.as_dict(), "weights_sha256": self.weights_sha256,
             "random_init": bool(self.random_init)}
        if self.quantize:
            m["quantize"] = self.quantize
        return m

    def decode(self, source) -> np.ndarray:
        p = self.preprocessing
        return load_rgb(source, p.input_size, p.interpolation, p.resize)

    def features(self, images: np.ndarray) -> np.ndarray:
        """(N, H, W, 3) uint8 at the input size -> (N, D) float32."""
        return self.engine(images)


@dataclass
class FeatureSet:
    """Features of a dataset's decodable images, in dataset order (skipped files removed)."""

    features: np.ndarray | None
    labels: np.ndarray
    classes: list[str]
    relpaths: list[str]
    hashes: list[str]
    skipped: list[Skipped]
    meta: dict
    stats: dict = field(default_factory=dict)

    @property
    def feature_dim(self) -> int:
        return int(self.stats.get("feature_dim", 0))


def calibration_images(extractor: Extractor, paths, n: int = 64) -> np.ndarray:
    """Up to ``n`` decodable images spread over ``paths`` (for int8 calibration)."""
    step = max(1, len(paths) // n)
    out = []
    for p in list(paths)[::step][:n]:
        try:
            out.append(extractor.decode(p))
        except ImageDecodeError:
            continue
    return np.stack(out) if out else np.zeros((0,), np.uint8)


def _hash_all(paths, root, progress) -> tuple[list[str | None], list[Skipped]]:
    keys: list[str | None] = []
    skipped = []
    for p in tqdm(paths, desc="hashing", unit="file", disable=not progress or len(paths) < 2000, leave=False):
        try:
            keys.append(file_sha256(p))
        except OSError as e:
            keys.append(None)
            skipped.append(Skipped(_relp(p, root), f"unreadable ({e.strerror}), skipped"))
    return keys, skipped


def _relp(p: Path, root: Path) -> str:
    try:
        return Path(p).relative_to(root).as_posix()
    except ValueError:
        return str(p)


def extract(dataset: Dataset, extractor: Extractor | None = None, cache_dir: str | Path | None = None,
            use_cache: bool = True, out: str | Path | None = None, keep: bool = True,
            progress: bool = True) -> FeatureSet:
    """Features for every decodable image of ``dataset``.

    Cached rows are reused (``use_cache=False`` recomputes all); new rows are appended to the cache after
    each batch.  ``out`` writes a self-describing ``features.h5``; ``keep=False`` does not hold the
    features in memory (``FeatureSet.features`` is then None).
    """
    extractor = extractor or Extractor()
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    keys, skipped = _hash_all(dataset.paths, dataset.root, progress)
    skipped = list(dataset.skipped) + skipped
    bad: set[int] = {i for i, k in enumerate(keys) if k is None}
    stats: dict = {"n_files": len(dataset)}
    with FeatureCache(cache_dir, extractor.meta) as cache:
        todo: dict[str, int] = {}
        for i, k in enumerate(keys):
            if k is not None and (not use_cache or not cache.contains(k)) and k not in todo:
                todo[k] = i
        n_hits = sum(1 for i, k in enumerate(keys) if k is not None and k not in todo)
        if todo:
            if extractor.quantize and extractor.calibration is None:
                extractor.calibration = lambda: calibration_images(extractor, dataset.paths)
            _ = extractor.engine  # build the model outside the timed part
        t0 = time.perf_counter()
        failed = _compute(extractor, dataset, todo, cache, progress) if todo else {}
        seconds = time.perf_counter() - t0
        for i, k in enumerate(keys):
            if k in failed:
                bad.add(i)
        for k, reason in failed.items():
            skipped.append(Skipped(_relp(dataset.paths[todo[k]], dataset.root), f"{reason}, skipped"))
        good = [i for i in range(len(dataset)) if i not in bad]
        n_computed = len(todo) - len(failed)
        if n_computed >= 1:
            rate, source = n_computed / seconds, "measured"
            cache.set_attr("images_per_second", rate)
            cache.set_attr("images_per_second_n", n_computed)
        else:
            rate = cache.attr("images_per_second")
            rate, source = (float(rate), "cache") if rate is not None else (None, "none")
        if not good:
            raise BadInputError(f"{dataset.root}: none of the {len(dataset)} files could be decoded as an image")
        good_keys = [keys[i] for i in good]
        stats.update(n_images=len(good), n_computed=n_computed, cache_hits=n_hits, seconds=seconds,
                     images_per_second=rate, images_per_second_source=source, cache_path=str(cache.path),
                     cache_rows=len(cache), cache_bytes=cache.size_bytes(), feature_dim=cache.dim,
                     recovered_corrupt_cache=cache.recovered_from)
        labels = np.asarray([dataset.labels[i] for i in good], dtype=np.int64)
        relpaths = [_relp(dataset.paths[i], dataset.root) for i in good]
        fs = FeatureSet(None, labels, list(dataset.classes), relpaths, good_keys, skipped, extractor.meta, stats)
        if out is not None:
            write_features_h5(out, fs, cache)
        if keep:
            fs.features = cache.get(good_keys)
    return fs


def stream_features(extractor: Extractor, paths: list, progress: bool = True, desc: str | None = None):
    """Yield ``(ok_positions, features, failures)`` batch by batch for ``paths``.

    Decoding runs in worker threads one batch ahead of the model, so memory stays bounded by about three
    batches of images whatever the number of files.  ``failures`` is a list of ``(position, reason)``.
    """
    bs = extractor.batch_size
    batches = [list(range(i, min(i + bs, len(paths)))) for i in range(0, len(paths), bs)]
    engine = extractor.engine

    def decode(i):
        try:
            return extractor.decode(paths[i]), None
        except ImageDecodeError as e:
            return None, e.reason

    desc = desc or f"extract {extractor.backbone}/{extractor.layer}"
    with ThreadPoolExecutor(extractor.workers) as pool, \
            tqdm(total=len(paths), desc=desc, unit="img", disable=not progress) as bar:
        pending: deque = deque()
        nxt = 0
        while nxt < len(batches) and len(pending) < 2:
            pending.append((batches[nxt], [pool.submit(decode, i) for i in batches[nxt]]))
            nxt += 1
        while pending:
            batch, futs = pending.popleft()
            if nxt < len(batches):
                pending.append((batches[nxt], [pool.submit(decode, i) for i in batches[nxt]]))
                nxt += 1
            imgs, ok, failures = [], [], []
            for i, f in zip(batch, futs):
                img, reason = f.result()
                if img is None:
                    failures.append((i, reason))
                else:
                    imgs.append(img)
                    ok.append(i)
            feats = engine(np.stack(imgs)) if imgs else np.zeros((0, 0), np.float32)
            yield ok, feats, failures
            bar.update(len(batch))


def _compute(extractor: Extractor, dataset: Dataset, todo: dict[str, int], cache: FeatureCache,
             progress: bool) -> dict[str, str]:
    """Compute the images in ``todo`` (key -> dataset index) into the cache; returns the failures."""
    keys = list(todo)
    paths = [dataset.paths[todo[k]] for k in keys]
    failed: dict[str, str] = {}
    for ok, feats, failures in stream_features(extractor, paths, progress):
        if ok:
            cache.put([keys[i] for i in ok], feats)
        for i, reason in failures:
            failed[keys[i]] = reason
    return failed


def write_features_h5(path: str | Path, fs: FeatureSet, cache: FeatureCache, chunk: int = 1024) -> Path:
    """``features.h5``: features, labels, class names, relative paths, content hashes; settings as attributes."""
    import json

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n, d = len(fs.hashes), cache.dim
    tmp = path.with_suffix(".h5.part")
    with h5py.File(tmp, "w") as f:
        ds = f.create_dataset("features", shape=(n, d), dtype="float32", chunks=(min(n, 256), d),
                              compression="gzip", compression_opts=4, shuffle=True)
        for s in range(0, n, chunk):
            ds[s:s + chunk] = cache.get(fs.hashes[s:s + chunk])
        f.create_dataset("labels", data=fs.labels)
        f.create_dataset("class_names", data=np.array(fs.classes, dtype=h5py.string_dtype()))
        f.create_dataset("paths", data=np.array(fs.relpaths, dtype=h5py.string_dtype()))
        f.create_dataset("hashes", data=np.array(fs.hashes, dtype="S64"))
        for k, v in fs.meta.items():
            f.attrs[k] = json.dumps(v) if isinstance(v, (dict, list)) else ("" if v is None else v)
        f.attrs["skipped"] = json.dumps([s.as_dict() for s in fs.skipped])
    tmp.replace(path)
    return path


def read_features_h5(path: str | Path) -> FeatureSet:
    """Read a ``features.h5`` written by :func:`extract`."""
    import json

    with h5py.File(path, "r") as f:
        meta = {k: (json.loads(v) if isinstance(v, str) and v[:1] in "[{" else v) for k, v in f.attrs.items()}
        skipped = [Skipped(**s) for s in meta.pop("skipped", [])]
        return FeatureSet(f["features"][:], f["labels"][:], [c.decode() if isinstance(c, bytes) else c
                                                              for c in f["class_names"][:]],
                          [p.decode() if isinstance(p, bytes) else p for p in f["paths"][:]],
                          [h.decode() for h in f["hashes"][:]], skipped, meta,
                          {"feature_dim": int(f["features"].shape[1]), "n_images": int(f["features"].shape[0])})
