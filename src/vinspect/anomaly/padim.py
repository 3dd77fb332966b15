"""PaDiM (Defard et al., ICPR 2021): a Gaussian per patch position of the normal images' features; a patch's
score is its Mahalanobis distance to its position's Gaussian.

Features are reduced to ``dims`` randomly chosen channels (as in the paper); the covariance is regularised with
``eps * I``.  The inverse covariances are stored as float16 (``positions x dims x dims``).  Positions need the
images aligned, so PaDiM suits parts photographed in a fixture; PatchCore does not need it.
"""

from __future__ import annotations

import torch

from ..errors import BadInputError


class Padim:
    def __init__(self, dims: int = 100, eps: float = 0.01, seed: int = 0):
        self.dims = int(dims)
        self.eps = float(eps)
        self.seed = int(seed)
        self.channels: torch.Tensor | None = None  # (d,) indices kept
        self.mean: torch.Tensor | None = None  # (h*w, d)
        self.inv_cov: torch.Tensor | None = None  # (h*w, d, d) float16

    def config(self) -> dict:
        return {"dims": self.dims, "eps": self.eps, "seed": self.seed}

    def fit(self, features: torch.Tensor, progress: bool = False) -> "Padim":
        n, c, h, w = features.shape
        if n < 2:
            raise BadInputError("PaDiM needs at least 2 normal images")
        d = min(self.dims, c)
        g = torch.Generator().manual_seed(self.seed)
        self.channels = torch.sort(torch.randperm(c, generator=g)[:d]).values
        x = features[:, self.channels].float().permute(2, 3, 0, 1).reshape(h * w, n, d)  # (P, n, d)
        mean = x.mean(1)
        xc = x - mean[:, None, :]
        cov = xc.transpose(1, 2) @ xc / (n - 1) + self.eps * torch.eye(d)[None]
        self.mean = mean
        self.inv_cov = torch.linalg.inv(cov).to(torch.float16)
        self.shape = (h, w)
        return self

    def extend(self, features: torch.Tensor, progress: bool = False) -> "Padim":
        """PaDiM's Gaussians are refitted on everything (cheap): see AnomalyModel.extend."""
        raise NotImplementedError

    def set_state(self, channels, mean, inv_cov, shape) -> None:
        self.channels, self.mean, self.inv_cov, self.shape = channels.long(), mean.float(), inv_cov, tuple(shape)

    def score(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (Mahalanobis distance maps (N, h, w), image scores: the maximum patch (N,))."""
        if self.mean is None:
            raise RuntimeError("Padim.score before fit")
        n, c, h, w = features.shape
        if (h, w) != tuple(self.shape):
            raise BadInputError(f"PaDiM was fitted on a {self.shape[1]}x{self.shape[0]} feature grid, got {w}x{h} "
                                "(use the model's own input size)")
        x = features[:, self.channels].float().permute(2, 3, 0, 1).reshape(h * w, n, -1) - self.mean[:, None, :]
        inv = self.inv_cov.float()
        out = torch.empty(h * w, n)
        for s in range(0, h * w, 256):
            xs = x[s:s + 256]
            out[s:s + 256] = torch.einsum("pnd,pde,pne->pn", xs, inv[s:s + 256], xs).clamp_min_(0).sqrt_()
        maps = out.T.reshape(n, h, w)
        return maps, maps.flatten(1).max(1).values
