"""The trainable networks: the lab's small CNN (``scratch``) and a pretrained backbone with a new head
(``transfer`` / ``finetune``).  Both take (N, C, H, W) float pixels in 0..255: normalisation is inside."""

from __future__ import annotations

import torch
from torch import nn

from ..backbones.cut import BackboneCut
from ..errors import BadInputError


class LabNet(nn.Module):
    """Conv 32 -> MaxPool -> Conv 64 -> MaxPool -> Conv 128 -> MaxPool -> Flatten -> Dense 128 ReLU -> Dense
    (3x3 kernels, 'same' padding, ReLU), as in the steel-defect lab; dropout before the last layer."""

    def __init__(self, n_classes: int, in_channels: int = 1, input_size: tuple[int, int] = (128, 128),
                 widths=(32, 64, 128), dense: int = 128, dropout: float = 0.0):
        super().__init__()
        layers: list[nn.Module] = []
        c = in_channels
        for w in widths:
            layers += [nn.Conv2d(c, w, 3, padding="same"), nn.ReLU(inplace=True), nn.MaxPool2d(2)]
            c = w
        self.features = nn.Sequential(*layers)
        h, w = input_size
        for _ in widths:
            h, w = h // 2, w // 2
        if h < 1 or w < 1:
            raise BadInputError(f"input size {input_size}: too small for {len(widths)} pooling steps")
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, dense), nn.ReLU(inplace=True),
                                        nn.Dropout(dropout), nn.Linear(dense, n_classes))
        self.in_channels = in_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] != self.in_channels:
            x = x.mean(dim=1, keepdim=True) if self.in_channels == 1 else x.expand(-1, self.in_channels, -1, -1)
        return self.classifier(self.features(x / 127.5 - 1.0))


class BackboneClassifier(BackboneCut):
    """A pretrained backbone cut at ``layer`` -> global average pooling -> dropout -> dense.

    ``stage('head')`` trains the head only (the backbone frozen, its batch-norm statistics fixed);
    ``stage('finetune')`` also trains the top ``unfreeze`` blocks up to the cut.
    """

    def __init__(self, model: nn.Module, layer: str, n_classes: int, mean, std, dropout: float = 0.2,
                 unfreeze: int = 2, probe_size: tuple[int, int] = (224, 224)):
        from ..backbones.build import candidate_layers

        blocks = candidate_layers(model)
        if layer not in blocks:
            raise BadInputError(f"layer {layer!r}: training cuts the backbone at one of {', '.join(blocks)}")
        upto = blocks[: blocks.index(layer) + 1]
        with_params = [b for b in upto if any(True for _ in model.get_submodule(b).parameters())]
        super().__init__(model, layer, mean, std, "avg")
        self.top_blocks = with_params[-unfreeze:] if unfreeze > 0 else []
        with torch.no_grad():
            c = self.body.eval()(torch.zeros(1, 3, *probe_size)).shape[1]
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(c, n_classes)
        self._stage = "head"
        self.stage("head")

    def _trainable_prefixes(self) -> list[str]:
        return [] if self._stage == "head" else list(self.top_blocks)

    def stage(self, name: str) -> None:
        if name not in ("head", "finetune"):
            raise ValueError(name)
        self._stage = name
        prefixes = tuple(p + "." for p in self._trainable_prefixes())
        for n, p in self.body.named_parameters():
            p.requires_grad_(_under(n, prefixes))
        self.train(self.training)

    def train(self, mode: bool = True):
        super().train(mode)
        if mode:
            # Frozen layers run as at inference.  Batch-norm layers keep their ImageNet statistics even in the
            # unfrozen blocks (their scale and shift still train): a few hundred augmented images would
            # otherwise shift the statistics the new head was fitted on (the usual fine-tuning advice).
            prefixes = tuple(p + "." for p in self._trainable_prefixes())
            for n, m in self.body.named_modules():
                leaf = next(iter(m.children()), None) is None  # (an FX graph module switches graphs on train())
                if isinstance(m, nn.modules.batchnorm._BatchNorm) or (leaf and not _under(n + ".", prefixes)):
                    m.training = False
        return self

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled backbone features (N, C) of (N, C, H, W) pixels in 0..255 (the cut's forward)."""
        return BackboneCut.forward(self, x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(self.features(x)))


def _under(name: str, prefixes: tuple[str, ...]) -> bool:
    """Whether parameter/module ``name`` lies in one of the blocks ``prefixes`` (FX keeps dotted module paths,
    possibly under a ``net.`` wrapper)."""
    name = name.removeprefix("net.")
    return bool(prefixes) and name.startswith(prefixes)


def build_network(meta_net: dict, n_classes: int, pretrained: bool = True) -> tuple[nn.Module, dict]:
    """The network described by ``meta_net`` (as stored in a bundle) and what to record about its weights.

    ``pretrained``: load the backbone's ImageNet weights (training); a saved bundle loads its own instead.
    """
    size = tuple(meta_net["input_size"])
    if meta_net["kind"] == "labnet":
        net = LabNet(n_classes, meta_net["in_channels"], size, meta_net["widths"], meta_net["dense"],
                     meta_net["dropout"])
        return net, {"source": "random-init"}
    from ..backbones.build import create_backbone

    lb = create_backbone(meta_net["backbone"], meta_net.get("weights"), random_init=not pretrained)
    pre = lb.spec.preprocessing
    net = BackboneClassifier(lb.model, meta_net["layer"], n_classes, pre.mean, pre.std, meta_net["dropout"],
                             meta_net.get("unfreeze", 0), size)
    return net, {"source": lb.weights_source, "sha256": lb.weights_sha256, "path": lb.weights_path}
