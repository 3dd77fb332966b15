"""Decode a dataset once into memory at the training input size; batches with augmentation for training."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ..data.dataset import Skipped
from ..data.decode import load_rgb, to_grey  # noqa: F401 (to_grey re-exported)
from ..errors import ImageDecodeError


def decode_all(paths, size: tuple[int, int], resize: str = "squash", grey: bool = False,
               interpolation: str = "bicubic", workers: int | None = None, progress: bool = True,
               desc: str = "decode") -> tuple[np.ndarray, list[int], list[Skipped]]:
    """``(images (n_ok, H, W, C) uint8, indices of the decoded paths, skipped)``; decoding runs in threads."""
    from tqdm.auto import tqdm

    paths = [str(p) for p in paths]
    c = 1 if grey else 3
    out = np.empty((len(paths), size[0], size[1], c), dtype=np.uint8)
    ok = np.zeros(len(paths), dtype=bool)
    skipped: list[Skipped] = []

    def one(i):
        try:
            a = load_rgb(paths[i], size, interpolation, resize)
        except ImageDecodeError as e:
            return i, None, e.reason
        return i, (to_grey(a) if grey else a), None

    workers = workers or min(4, os.cpu_count() or 1)
    with ThreadPoolExecutor(workers) as pool:
        for i, a, reason in tqdm(pool.map(one, range(len(paths))), total=len(paths), desc=desc, unit="img",
                                 disable=not progress, leave=False):
            if a is None:
                skipped.append(Skipped(paths[i], reason))
            else:
                out[i] = a
                ok[i] = True
    idx = np.flatnonzero(ok)
    return out[idx], idx.tolist(), skipped


class ArrayDataset:
    """(N, H, W, C) uint8 images + labels -> (C, H, W) float tensors in 0..255, augmented when a transform is given."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform=None):
        self.images = images
        self.labels = np.asarray(labels, dtype=np.int64)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i):
        import torch

        x = torch.from_numpy(np.ascontiguousarray(self.images[i])).permute(2, 0, 1)
        x = self.transform(x) if self.transform is not None else x.float()
        return x, int(self.labels[i])
