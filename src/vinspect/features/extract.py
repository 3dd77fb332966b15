"""Extraction: dataset -> (cached) pooled features, streamed batch by batch with a progress bar."""

from __future__ import annotations

import logging
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


ENGINES = ("auto", "torch", "onnx", "openvino")  # the choices of every command's --engine
DEFAULT_ENGINE = "auto"  # see choose_engine; the fallback when OpenVINO is missing is said once
PRECISIONS = (None, "fp32", "bf16", "int8")  # --precision; None: the engine's own (auto: see choose_engine)
QUANTIZE = (None, "int8")
# Whether --engine auto may pick bf16 on a CPU with native bf16.  Off: on the default backbone and layer
# (EfficientNet-Lite0, blocks.6) OpenVINO's bf16 moved the pooled features by 8 % (relative L2; cosine to
# fp32 down to 0.98 on NEU images), which is not faithful; bf16 stays one option away (--precision bf16).
AUTO_BF16 = False

_log = logging.getLogger("vinspect.engine")
_announced: set[str] = set()


def _default_workers() -> int:
    from .threads import decode_workers

    return decode_workers()


def _onnxruntime_status() -> tuple[bool, str]:
    try:
        import onnxruntime  # noqa: F401
    except Exception as e:  # noqa: BLE001
        return False, f"onnxruntime is not installed ({type(e).__name__}: {e})"
    return True, "onnxruntime"


def choose_engine(precision: str | None = None) -> tuple[str, str, str]:
    """``--engine auto``: (engine, precision, reason).  The rule, the fastest engine installed whose precision
    keeps the features faithful:

    1. OpenVINO installed: openvino, fp32 (bf16 only where the CPU has avx512_bf16 or AMX *and* AUTO_BF16 is
       on; it is off, see AUTO_BF16);
    2. else onnxruntime installed: onnx (fp32);
    3. else torch.

    ``precision`` asks for one: int8 (openvino with NNCF, else onnxruntime's static quantisation), bf16
    (openvino on a CPU with native bf16; otherwise fp32, saying why) or fp32.
    """
    from .openvino_engine import cpu_flags, native_bf16, openvino_status

    flags = cpu_flags()
    ov_ok, ov_why = openvino_status()
    ort_ok, ort_why = _onnxruntime_status()
    if ov_ok:
        if precision == "int8":
            return "openvino", "int8", f"auto: openvino int8 as asked ({ov_why}, NNCF post-training quantisation)"
        bf16 = native_bf16(flags)
        if precision == "bf16":
            if bf16:
                return "openvino", "bf16", f"auto: openvino bf16 as asked ({ov_why}; the CPU has native bf16)"
            return "openvino", "fp32", (f"auto: openvino fp32, not bf16: this CPU has no bf16 instructions "
                                        f"({' or '.join(('avx512_bf16', 'amx_bf16'))})")
        if bf16 and AUTO_BF16:
            return "openvino", "bf16", f"auto: openvino bf16 ({ov_why}; the CPU has native bf16)"
        why = ("the CPU has native bf16, but bf16 moved the default backbone's features by ~8 %, so auto keeps "
               "fp32 (--precision bf16 to choose it)" if bf16 else "the CPU has no native bf16")
        return "openvino", "fp32", f"auto: openvino fp32 with {ov_why}; {why}"
    if precision == "bf16":
        raise BadInputError(f"--precision bf16 needs the openvino engine: {ov_why}")
    if ort_ok:
        return "onnx", (precision or "fp32"), f"auto: onnx {precision or 'fp32'}: {ov_why}"
    if precision == "int8":
        raise BadInputError(f"--precision int8 needs openvino or onnxruntime: {ov_why}; {ort_why}")
    return "torch", "fp32", f"auto: torch: {ov_why}; {ort_why}"


def resolve_engine(engine: str, precision: str | None, quantize: str | None) -> tuple[str, str, str]:
    """The engine and precision that will run, and why (``--engine auto`` goes through :func:`choose_engine`)."""
    if engine == "auto":
        name, prec, reason = choose_engine(precision)
        if reason not in _announced:  # said once per process; a fallback (no OpenVINO) is a warning
            _announced.add(reason)
            _log.log(logging.INFO if name == "openvino" else logging.WARNING, "vinspect: %s", reason)
        return name, prec, reason
    if engine == "torch":
        if precision not in (None, "fp32"):
            raise BadInputError(f"--precision {precision}: the torch engine runs fp32 (use --engine openvino)")
        return "torch", "fp32", "asked: --engine torch"
    if engine == "onnx":
        if precision == "bf16":
            raise BadInputError("--precision bf16: onnxruntime runs fp32 or int8 here (use --engine openvino)")
        prec = "int8" if quantize or precision == "int8" else "fp32"
        return "onnx", prec, "asked: --engine onnx"
    from .openvino_engine import cpu_flags, native_bf16, openvino_status

    ok, why = openvino_status()
    if not ok:
        raise BadInputError(f"--engine openvino: {why} (pip install openvino nncf)")
    if precision == "bf16" and not native_bf16(cpu_flags()):
        raise BadInputError("--precision bf16: this CPU has no bf16 instructions (avx512_bf16 or amx_bf16); "
                            "OpenVINO would run it in fp32")
    return "openvino", precision or "fp32", f"asked: --engine openvino ({why})"


class Extractor:
    """The settings of one feature extraction, and the engine, built on first use.

    Knowing the cache key needs no network and no model: a fully cached run never imports torch.
    """

    def __init__(self, backbone: str = DEFAULT_BACKBONE, layer: str | None = None, pool: str = "avg",
                 image_size: int | None = None, resize: str = "squash", weights: str | Path | None = None,
                 random_init: bool = False, batch_size: int = 32, workers: int | None = None,
                 device: str | None = None, engine: str = DEFAULT_ENGINE, quantize: str | None = None,
                 onnx_dir: str | Path | None = None, calibration=None, onnx_file: str | Path | None = None,
                 precision: str | None = None, tiles: tuple[int, int, str] | None = None):
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
        if quantize not in QUANTIZE:
            raise BadInputError(f"--quantize {quantize!r}: use int8")
        if quantize and engine != "onnx":
            raise BadInputError("--quantize int8 needs --engine onnx (--precision int8 quantises with any engine "
                                "but torch)")
        self.tiles = _check_tiles(tiles)
        self.requested_engine = engine
        self.engine_name, self.precision, self.engine_reason = resolve_engine(engine, precision, quantize)
        if self.engine_name == "onnx" and self.precision == "int8":
            quantize = "int8"  # onnxruntime's static quantisation
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

    @property
    def input_hw(self) -> tuple[int, int]:
        """(height, width) of a decoded image: the square input, or the canvas of ``rows`` x ``cols`` tiles."""
        s = self.preprocessing.input_size
        return (self.tiles[0] * s, self.tiles[1] * s) if self.tiles else (s, s)

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
        from .torch_engine import FeatureNet, TiledNet

        net = FeatureNet(self._build(), self.layer, self.pool, self.preprocessing)
        if self.tiles:
            net = TiledNet(net, self.tiles[0], self.tiles[1], self.preprocessing.input_size, self.tiles[2])
        return net.eval()

    @property
    def onnx_path(self) -> Path:
        """The ONNX export this engine runs (onnx) or converts (openvino: always the fp32 export)."""
        if self.onnx_file is not None:
            return self.onnx_file
        d = self.onnx_dir or (default_cache_dir() / "onnx")
        return d / f"{cache_key(self.meta if self.engine_name == 'onnx' else self._fp32_meta())}.onnx"

    @property
    def openvino_path(self) -> Path:
        """``<cache>/openvino/<feature-cache key>.xml``: keyed like the features (weights, layer, pooling, input
        size, precision)."""
        d = (self.onnx_dir.parent if self.onnx_dir else default_cache_dir()) / "openvino"
        return d / f"{cache_key(self.meta)}.xml"

    @property
    def needs_calibration(self) -> bool:
        return self.precision == "int8"

    def engine_info(self) -> dict:
        """What results record about the engine: engine, precision, why, and the CPU flags that matter."""
        from .openvino_engine import cpu_flags

        return {"engine": self.engine_name, "precision": self.precision, "engine_reason": self.engine_reason,
                "cpu_flags": cpu_flags()}

    @property
    def engine(self):
        if self._engine is None:
            if self.engine_name == "onnx":
                from .onnx_engine import OnnxEngine

                self._engine = OnnxEngine(self.onnx_path, self.torch_net, self.input_hw,
                                          quantize=self.quantize, calibration=self.calibration)
            elif self.engine_name == "openvino":
                from .onnx_engine import export_module
                from .openvino_engine import OpenVinoEngine

                def build_onnx():
                    export_module(self.torch_net(), np.zeros((2, *self.input_hw, 3), np.uint8), self.onnx_path)

                self._engine = OpenVinoEngine(self.openvino_path, self.onnx_path, build_onnx, self.precision,
                                              calibration=self.calibration)
            else:
                from .torch_engine import TorchEngine

                self._engine = TorchEngine(self._build(), self.layer, self.pool, self.preprocessing, self.device,
                                           self.tiles)
        return self._engine

    def _fp32_meta(self) -> dict:
        m = {"backbone": self.backbone, "arch": self.spec.arch, "layer": self.layer, "pool": self.pool,
             "preprocessing": self.preprocessing.as_dict(), "weights_sha256": self.weights_sha256,
             "random_init": bool(self.random_init)}
        if self.tiles:  # absent otherwise: the keys of untiled features are unchanged
            m["tiles"] = list(self.tiles)
        return m

    @property
    def meta(self) -> dict:
        """The settings that determine the features (the cache key).  The fp32 engines (torch, onnx, openvino)
        agree to about 1e-5 and share a cache; reduced precisions (onnx int8, openvino bf16 / int8) differ and
        each get their own."""
        m = self._fp32_meta()
        if self.quantize:
            m["quantize"] = self.quantize  # onnxruntime int8 (key unchanged since it was introduced)
        elif self.precision != "fp32":
            m["precision"] = self.precision
            m["engine"] = self.engine_name
        return m

    def decode(self, source) -> np.ndarray:
        p = self.preprocessing
        return load_rgb(source, self.input_hw if self.tiles else p.input_size, p.interpolation, p.resize)

    def features(self, images: np.ndarray) -> np.ndarray:
        """(N, H, W, 3) uint8 at the input size (tiled: the canvas of tiles) -> (N, D) float32."""
        return self.engine(images)


MAX_TILES = 64
TILE_REDUCE = ("max", "mean")  # how the tiles' features become the image's (torch_engine.TiledNet)


def _check_tiles(tiles) -> tuple[int, int, str] | None:
    """``(rows, cols, reduce)`` checked (None: no tiles)."""
    if tiles is None:
        return None
    try:
        rows, cols, reduce = int(tiles[0]), int(tiles[1]), str(tiles[2])
    except (TypeError, ValueError, IndexError):
        raise BadInputError(f"tiles {tiles!r}: give (rows, cols, max|mean)") from None
    if rows < 1 or cols < 1 or rows * cols > MAX_TILES:
        raise BadInputError(f"tiles {rows}x{cols}: between 1 and {MAX_TILES} tiles")
    if reduce not in TILE_REDUCE:
        raise BadInputError(f"tiles reduce {reduce!r}: use one of {', '.join(TILE_REDUCE)}")
    return rows, cols, reduce


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
            if extractor.needs_calibration and extractor.calibration is None:
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
