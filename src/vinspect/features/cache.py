"""HDF5 feature cache keyed by image content.

One file per (backbone, weights sha256, layer, pooling, preprocessing); rows keyed by the sha256 of each
image file's bytes, so an unchanged image is never recomputed, a changed one always is, and the same image
in two datasets is computed once.  Rows are appended batch by batch and flushed: an interrupted run keeps
what it wrote.  A file lock keeps two processes from writing the same cache at once.

A damaged file (a hard kill during a write, a bad disk: h5py's "filter returned failure during read") is
found when the cache is opened: every chunk is read once.  The rows that still read are copied into a fresh
file, the damaged one is set aside as ``<name>.corrupt-<time>.h5`` with one warning, and the rows lost are
simply missing, so the caller computes them again.  At most ``KEEP_CORRUPT`` set-aside files are kept.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path

import h5py
import numpy as np
from filelock import FileLock

KEY_DTYPE = "S64"
KEEP_CORRUPT = 3  # set-aside damaged files kept per cache file (the oldest are deleted)
_log = logging.getLogger("vinspect.cache")


def default_cache_dir() -> Path:
    env = os.environ.get("VINSPECT_CACHE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "vinspect"


def cache_key(meta: dict) -> str:
    """A readable, unique file stem for the extraction settings in ``meta``."""
    digest = hashlib.sha256(json.dumps(meta, sort_keys=True).encode()).hexdigest()[:12]
    stem = f"{meta['backbone']}__{meta['layer']}__{meta['pool']}__{meta['preprocessing']['input_size']}"
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in stem) + f"__{digest}"


class FeatureCache:
    """``get(keys)`` -> rows found; ``put(keys, features)`` appends.  Use as a context manager."""

    def __init__(self, directory: str | Path, meta: dict):
        self.dir = Path(directory).expanduser()
        self.meta = meta
        self.path = self.dir / f"{cache_key(meta)}.h5"
        self._lock = None
        self._f: h5py.File | None = None
        self._index: dict[bytes, int] = {}
        self.recovered_from: str | None = None

    def __enter__(self) -> "FeatureCache":
        self.dir.mkdir(parents=True, exist_ok=True)
        self._lock = FileLock(str(self.path) + ".lock")
        self._lock.acquire()
        try:
            self._f = h5py.File(self.path, "a")
            good = self._readable_rows()
        except OSError as e:  # not even the header or the keys read: nothing to salvage
            if self._f is not None:
                try:
                    self._f.close()
                except Exception as close_error:  # noqa: BLE001 - closing a broken file
                    _log.debug("closing the damaged cache: %s", close_error)
                self._f = None
            self._set_aside(f"unreadable ({str(e).splitlines()[0][:120]})", 0)
            self._f = h5py.File(self.path, "a")
            good = None
        if good is not None and not good["ok"]:
            self._salvage(good)
        if "keys" in self._f:
            keys = self._f["keys"][:]
            n = int(self._f.attrs.get("n_rows", len(keys)))
            self._index = {k: i for i, k in enumerate(keys[:n])}
        else:
            for k, v in self.meta.items():
                self._f.attrs[k] = json.dumps(v) if isinstance(v, (dict, list)) else ("" if v is None else v)
        return self

    # -- damage -------------------------------------------------------------------------------------------

    def _readable_rows(self) -> dict | None:
        """Read every chunk once: {"ok": all readable, "rows": indices of the readable rows}; None if empty."""
        f = self._f
        if "keys" not in f:
            return None
        keys = f["keys"][:]  # small: read whole (an OSError here means nothing can be trusted)
        n = int(f.attrs.get("n_rows", len(keys)))
        if "features" not in f:
            return {"ok": True, "ranges": [(0, min(n, len(keys)))]}
        ds = f["features"]
        n = min(n, len(keys), ds.shape[0])
        step = ds.chunks[0] if ds.chunks else 256
        ranges, ok = [], True
        for start in range(0, n, step):
            stop = min(start + step, n)
            try:
                ds[start:stop]
                ranges.append((start, stop))
            except OSError:
                ok = False
        return {"ok": ok, "ranges": ranges}

    def _set_aside(self, why: str, kept: int) -> Path:
        stamp = f"{time.strftime('%Y%m%dT%H%M%S')}-{time.time_ns() % 10**9:09d}-{os.getpid()}"
        bad = self.path.with_name(f"{self.path.stem}.corrupt-{stamp}.h5")
        self.path.rename(bad)
        self.recovered_from = str(bad)
        old = sorted(self.path.parent.glob(f"{self.path.stem}.corrupt-*.h5"), key=lambda q: q.stat().st_mtime)
        for q in old[:-KEEP_CORRUPT]:
            q.unlink(missing_ok=True)
        _log.warning("feature cache %s is damaged (%s): set aside as %s; %d readable rows kept, the others "
                     "are computed again", self.path, why, bad.name, kept)
        return bad

    def _salvage(self, good: dict) -> None:
        """Copy the readable rows into a fresh file and set the damaged one aside."""
        f = self._f
        ranges = good["ranges"]
        rows = np.concatenate([np.arange(a, b) for a, b in ranges]) if ranges else np.zeros(0, np.int64)
        tmp = self.path.with_name(self.path.name + ".salvage")
        with h5py.File(tmp, "w") as out:
            for k, v in f.attrs.items():
                out.attrs[k] = v
            src, keys = f["features"], f["keys"][:]
            d = src.shape[1]
            feats = out.create_dataset("features", shape=(len(rows), d), maxshape=(None, d), dtype="float32",
                                       chunks=src.chunks, compression="gzip", compression_opts=4, shuffle=True)
            out.create_dataset("keys", data=keys[rows], maxshape=(None,), dtype=KEY_DTYPE, chunks=(1024,))
            at = 0
            for a, b in ranges:  # chunk by chunk: only the readable ones
                feats[at:at + b - a] = src[a:b]
                at += b - a
            out.attrs["n_rows"] = len(rows)
        f.close()
        self._f = None
        self._set_aside("unreadable feature chunks", len(rows))
        os.replace(tmp, self.path)
        self._f = h5py.File(self.path, "a")

    def __exit__(self, *exc) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None
        if self._lock is not None:
            self._lock.release()

    def __len__(self) -> int:
        return len(self._index)

    def contains(self, key: str) -> bool:
        return key.encode() in self._index

    def get(self, keys: list[str]) -> np.ndarray:
        """Rows for ``keys`` (all must be present), in the order given; read in contiguous slabs."""
        rows = np.array([self._index[k.encode()] for k in keys], dtype=np.int64)
        ds = self._f["features"] if "features" in self._f else None
        if ds is None or len(rows) == 0:
            return np.zeros((len(rows), self.dim or 0), np.float32)
        uniq, inverse = np.unique(rows, return_inverse=True)
        out = np.empty((len(uniq), ds.shape[1]), np.float32)
        slab = 8192
        for start in range(int(uniq[0]) - int(uniq[0]) % slab, int(uniq[-1]) + 1, slab):
            sel = (uniq >= start) & (uniq < start + slab)
            if sel.any():
                block = ds[start:min(start + slab, int(uniq[-1]) + 1)]
                out[sel] = block[uniq[sel] - start]
        return out[inverse]

    @property
    def dim(self) -> int | None:
        return int(self._f["features"].shape[1]) if self._f is not None and "features" in self._f else None

    def put(self, keys: list[str], features: np.ndarray) -> None:
        new = [(k.encode(), f) for k, f in zip(keys, features) if k.encode() not in self._index]
        if not new:
            return
        f = self._f
        if "features" not in f:
            d = features.shape[1]
            f.create_dataset("features", shape=(0, d), maxshape=(None, d), dtype="float32",
                             chunks=(max(1, min(256, 65536 // max(d, 1))), d), compression="gzip",
                             compression_opts=4, shuffle=True)
            f.create_dataset("keys", shape=(0,), maxshape=(None,), dtype=KEY_DTYPE, chunks=(1024,))
        n = len(self._index)
        m = n + len(new)
        f["features"].resize((m, f["features"].shape[1]))
        f["keys"].resize((m,))
        f["features"][n:m] = np.stack([v for _, v in new]).astype(np.float32)
        f["keys"][n:m] = np.array([k for k, _ in new], dtype=KEY_DTYPE)
        f.attrs["n_rows"] = m  # rows beyond n_rows (a write cut short) are ignored on the next open
        for i, (k, _) in enumerate(new):
            self._index[k] = n + i
        f.flush()

    def set_attr(self, name: str, value) -> None:
        self._f.attrs[name] = value

    def attr(self, name: str, default=None):
        return self._f.attrs.get(name, default) if self._f is not None else default

    def size_bytes(self) -> int:
        return self.path.stat().st_size if self.path.exists() else 0
