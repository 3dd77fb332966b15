"""Features of every variant of the search space, from the HDF5 cache, computed in one pass per resolution.

Extraction is unsupervised (no label is used), so computing it once for every image before the nested
protocol splits anything leaks nothing.  One network per resolution returns, for each of the (up to) three
last stages, the average, max and GeM pooling of its map in one forward pass (tiled: per tile, then the max and
the mean over the tiles); every variant (single layers, their concatenations, ``avgmax``, max or mean over
tiles) is cut from that output and written into the same cache file that
:class:`vinspect.features.Extractor` with those settings reads, so a bundle trained on a chosen variant finds
its features there, and predicts with the plain extractor (the same network, fp32).
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import numpy as np

from ..data.dataset import Dataset, Skipped, file_sha256
from ..errors import BadInputError, ImageDecodeError
from ..features.cache import FeatureCache, cache_key, default_cache_dir
from ..features.extract import Extractor, stream_features
from .space import BASE_POOLS, FeatureVariant


def _relp(p, root) -> str:
    try:
        return Path(p).relative_to(root).as_posix()
    except ValueError:
        return str(p)


def variant_meta(base: Extractor, v: FeatureVariant) -> dict:
    """The cache key settings of ``v`` (what ``Extractor(**v.extractor_kwargs())`` would use)."""
    m = dict(base.meta, layer=v.layer, pool=v.pool)
    if v.grid:
        m["tiles"] = [*v.grid, v.tiles]
    return m


def _assemble(out: np.ndarray, stages: list[str], dims: dict[str, int], v: FeatureVariant) -> np.ndarray:
    """Cut variant ``v`` from the multi-pass output (per stage: avg, max, gem, each of that stage's width;
    tiled: that layout reduced by max over the tiles, then by their mean)."""
    if v.grid:
        half = out.shape[1] // 2
        out = out[:, :half] if v.tiles == "max" else out[:, half:]
    offs, o = {}, 0
    for s in stages:
        for p in BASE_POOLS:
            offs[(s, p)] = o
            o += dims[s]
    parts = []
    for s in v.layers:
        for p in (("avg", "max") if v.pool == "avgmax" else (v.pool,)):
            a = offs[(s, p)]
            parts.append(out[:, a:a + dims[s]])
    return np.concatenate(parts, axis=1)


class _Adapter:
    """What :func:`vinspect.features.stream_features` needs of an extractor, around the multi-pass engine."""

    def __init__(self, base: Extractor, engine, desc: str):
        self.base, self.engine, self.backbone, self.layer = base, engine, base.backbone, desc
        self.batch_size, self.workers = base.batch_size, base.workers

    def decode(self, source):
        return self.base.decode(source)


def _multi_engine(base: Extractor, stages: list[str], cache_dir: Path):
    """The engine (the base extractor's runtime) of the network returning avg/max/gem of every stage."""
    import torch

    from ..backbones.pooling import pool
    from ..features.torch_engine import CPU_CHUNK, FeatureNet, TiledNet

    key = {"multi": stages, "pools": list(BASE_POOLS), **base._fp32_meta()}  # noqa: SLF001
    if base.tiles:
        key["tiles"] = [*base.tiles[:2], "both"]
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    size = base.preprocessing.input_size
    how = f"tiles{base.tiles[0]}x{base.tiles[1]}" if base.tiles else base.preprocessing.resize
    stem = f"multi__{base.backbone}__{size}-{how}__{digest}"

    class MultiNet(FeatureNet):
        def forward(self, images):
            maps = self.spatial(images.permute(0, 3, 1, 2).float())
            maps = maps if isinstance(maps, list) else [maps]
            return torch.cat([pool(m, p) for m in maps for p in BASE_POOLS], dim=1)

    def net():
        m = MultiNet(base._build(), "+".join(stages), "avg", base.preprocessing)  # noqa: SLF001
        if base.tiles:  # per tile, then max and mean over the tiles (both: one pass)
            m = TiledNet(m, base.tiles[0], base.tiles[1], size, "both")
        return m.eval()

    example = np.zeros((2, *base.input_hw, 3), np.uint8)
    if base.engine_name == "openvino":
        from ..features.onnx_engine import export_module
        from ..features.openvino_engine import OpenVinoEngine

        onnx_path = cache_dir / "onnx" / f"{stem}.onnx"
        return OpenVinoEngine(cache_dir / "openvino" / f"{stem}.xml", onnx_path,
                              lambda: export_module(net(), example, onnx_path), "fp32")
    if base.engine_name == "onnx":
        from ..features.onnx_engine import OnnxEngine

        return OnnxEngine(cache_dir / "onnx" / f"{stem}.onnx", net, base.input_hw)
    m = net().to(memory_format=torch.channels_last)
    step = max(1, CPU_CHUNK // (base.tiles[0] * base.tiles[1] if base.tiles else 1))  # as TorchEngine

    def run(batch):
        with torch.inference_mode():
            return np.concatenate([m(torch.from_numpy(np.ascontiguousarray(batch[i:i + step]))).numpy()
                                   for i in range(0, len(batch), step)])
    return run


def stage_dims(base: Extractor, stages: list[str], caches: dict, sample) -> dict[str, int]:
    """Channels of each stage (from the open cache of its avg variant when filled, else one image through
    torch)."""
    dims = {}
    for v, c in caches.items():
        if v.pool == "avg" and "+" not in v.layer and c.dim:
            dims[v.layer] = c.dim
    if any(s not in dims for s in stages):
        import torch

        net = _multi_probe(base, stages)
        with torch.inference_mode():
            maps = net.spatial(torch.from_numpy(np.ascontiguousarray(sample[None])).permute(0, 3, 1, 2).float())
        maps = maps if isinstance(maps, list) else [maps]
        dims = {s: int(m.shape[1]) for s, m in zip(stages, maps)}
    return dims


def _multi_probe(base, stages):
    from ..features.torch_engine import FeatureNet

    return FeatureNet(base._build(), "+".join(stages), "avg", base.preprocessing).eval()  # noqa: SLF001


def load_variants(ds: Dataset, variants: list[FeatureVariant], stages: list[str], backbone: str,
                  cache_dir=None, engine: str = "auto", batch_size: int = 32, workers: int | None = None,
                  weights=None, progress: bool = True) -> dict:
    """Features of every variant for the decodable images of ``ds`` (computed once per resolution when not
    cached).  Returns ``{"features": {variant: (N, D)}, "labels", "hashes", "relpaths", "skipped", "stats"}``."""
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    keys, skipped = [], list(ds.skipped)
    for p in ds.paths:
        try:
            keys.append(file_sha256(p))
        except OSError as e:
            keys.append(None)
            skipped.append(Skipped(_relp(p, ds.root), f"unreadable ({e.strerror}), skipped"))
    groups: dict[tuple, list[FeatureVariant]] = {}
    for v in variants:
        groups.setdefault(v.pass_key, []).append(v)
    failed: dict[str, str] = {}
    stats = {"n_computed": 0, "passes_cached": 0, "seconds": 0.0, "passes": []}
    bases = {}
    for pkey, vs in groups.items():
        size, resize, grid = pkey
        kw = dict(vs[0].extractor_kwargs(), layer=stages[-1], pool="avg")
        if grid:
            kw["tiles"] = (*grid, "max")  # the pass computes max and mean (variant_meta names each)
        base = Extractor(backbone, weights=weights, batch_size=batch_size, workers=workers, engine=engine, **kw)
        if base.precision != "fp32":
            raise BadInputError(f"--auto runs fp32 engines only (the {base.engine_name} engine runs "
                                f"{base.precision} here)")
        bases[pkey] = base
        metas = {v: variant_meta(base, v) for v in vs}
        caches = {v: FeatureCache(cache_dir, m) for v, m in metas.items()}
        for c in caches.values():
            c.__enter__()
        try:
            todo = list(dict.fromkeys(k for k in keys if k is not None and k not in failed
                                      and not all(c.contains(k) for c in caches.values())))
            if todo:
                first = {k: i for i, k in reversed(list(enumerate(keys))) if k is not None}
                paths = [ds.paths[first[k]] for k in todo]
                sample = None
                for p in paths:
                    try:
                        sample = base.decode(p)
                        break
                    except ImageDecodeError:
                        continue
                if sample is None:
                    raise BadInputError(f"{ds.root}: none of the images could be decoded")
                dims = stage_dims(base, stages, caches, sample)
                engine_ = _multi_engine(base, stages, cache_dir)
                t0 = time.perf_counter()
                what = f"{grid[0]}x{grid[1]} tiles of {size}px" if grid else f"{size}px {resize}"
                ad = _Adapter(base, engine_, what)
                n = 0
                for ok, feats, failures in stream_features(ad, paths, progress, desc=f"features {what}"):
                    if ok:
                        ks = [todo[i] for i in ok]
                        for v, c in caches.items():
                            c.put(ks, _assemble(feats, stages, dims, v))
                        n += len(ok)
                    for i, reason in failures:
                        failed[todo[i]] = reason
                secs = time.perf_counter() - t0
                if n and secs > 0:  # the rate a later fully cached run reports (as features.extract records it)
                    for c in caches.values():
                        c.set_attr("images_per_second", n / secs)
                        c.set_attr("images_per_second_n", n)
                stats["n_computed"] += n
                stats["seconds"] += secs
                stats["passes"].append({"size": size, "resize": resize, "images": n, "seconds": secs,
                                        "images_per_second": n / secs if secs > 0 and n else None,
                                        **({"grid": list(grid)} if grid else {})})
            else:
                stats["passes_cached"] += 1
        finally:
            for c in caches.values():
                c.__exit__(None, None, None)
    for i, k in enumerate(keys):
        if k in failed:
            skipped.append(Skipped(_relp(ds.paths[i], ds.root), f"{failed[k]}, skipped"))
    good = [i for i, k in enumerate(keys) if k is not None and k not in failed]
    if not good:
        raise BadInputError(f"{ds.root}: none of the {len(ds)} files could be decoded as an image")
    gkeys = [keys[i] for i in good]
    feats = {}
    for pkey, vs in groups.items():
        for v in vs:
            with FeatureCache(cache_dir, variant_meta(bases[pkey], v)) as c:
                feats[v] = c.get(gkeys)
    base0 = bases[variants[0].pass_key]
    return {"features": feats, "labels": np.asarray([ds.labels[i] for i in good], np.int64), "hashes": gkeys,
            "relpaths": [_relp(ds.paths[i], ds.root) for i in good], "skipped": skipped, "stats": stats,
            "engine": base0.engine_info(), "weights_sha256": base0.weights_sha256}


__all__ = ["load_variants", "variant_meta", "cache_key"]
