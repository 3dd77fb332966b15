"""``unet`` models (task ``segment``): an encoder-decoder (U-Net or FPN, segmentation-models-pytorch) on a
registry backbone; weights in safetensors.  ``config``: ``arch``, ``n_classes``, ``threshold``,
``decoder_channels``, ``mask_format`` and the training settings.

A prediction's ``map`` is the defect probability (1 - p(background)) over the input grid; ``extra["regions"]``
lists the connected predicted regions (input-grid pixels): class, area, bounding box [x0, y0, x1, y1], centroid
[x, y], mean and max probability.  ``label`` is the defect class with the most predicted pixels, or
``background`` when nothing is found; ``score`` the largest defect probability."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import BadInputError
from .bundle import Bundle, save_bundle
from .predictor import Prediction, Predictor, register

WEIGHTS_FILE = "weights/segmenter.safetensors"


def regions(labels: np.ndarray, proba: np.ndarray, classes: list[str], min_area: int = 1) -> list[dict]:
    """Connected regions of a (H, W) class-index map; ``proba`` (K, H, W) class probabilities."""
    from scipy import ndimage as ndi

    out = []
    for k in range(1, len(classes)):
        lab, n = ndi.label(labels == k)
        if n == 0:
            continue
        objs = ndi.find_objects(lab)
        for i, sl in enumerate(objs, start=1):
            m = lab[sl] == i
            area = int(m.sum())
            if area < min_area:
                continue
            ys, xs = np.nonzero(m)
            pk = proba[k][sl][m]
            out.append({"class": classes[k], "area": area,
                        "bbox": [int(sl[1].start), int(sl[0].start), int(sl[1].stop - 1), int(sl[0].stop - 1)],
                        "centroid": [float(xs.mean() + sl[1].start), float(ys.mean() + sl[0].start)],
                        "mean_probability": float(pk.mean()), "max_probability": float(pk.max())})
    out.sort(key=lambda r: -r["area"])
    return out


@register("unet")
class SegmentPredictor(Predictor):
    """Per-pixel class probabilities in torch; the mask is p(defect) >= threshold (binary) or the argmax."""

    def __init__(self, bundle: Bundle, **runtime):
        super().__init__(bundle, **runtime)
        if self.engine not in (None, "torch", "auto"):
            raise BadInputError(f"--engine {self.engine}: segmentation models run with the torch engine; "
                                f"`vinspect export` makes an ONNX file of them")
        if bundle.task != "segment":
            raise BadInputError(f"{bundle.path}: a unet model must have task segment, not {bundle.task}")
        self.threshold = float(bundle.config.get("threshold", 0.5))
        self.net = self._load()

    def _load(self):
        from safetensors.torch import load_file

        from ..segment.model import build_segmenter
        from ..training.trainer import CL

        c = self.bundle.config
        name = (self.bundle.backbone or {}).get("name")
        if not name:
            raise BadInputError(f"{self.bundle.path / 'model.json'}: a unet model needs backbone.name")
        net, _ = build_segmenter(name, c.get("arch", "unet"), len(self.classes), random_init=True,
                                 decoder_channels=c.get("decoder_channels"))
        p = self.bundle.file(c.get("weights_file", WEIGHTS_FILE))
        try:
            net.load_state_dict(load_file(str(p)))
        except Exception as e:  # noqa: BLE001 - a damaged or foreign file is bad input
            raise BadInputError(f"{p}: does not fit the model described in model.json ({type(e).__name__})") from None
        return net.eval().to(memory_format=CL)

    def describe(self) -> dict:
        d = super().describe()
        d.update(arch=self.bundle.config.get("arch"), threshold=self.threshold, engine="torch")
        return d

    def proba(self, pixels: np.ndarray) -> np.ndarray:
        """(N, H, W, 3) uint8 -> (N, K, H, W) class probabilities (background first)."""
        from ..segment.train import predict_proba

        return predict_proba(self.net, pixels, batch_size=self.batch_size)

    def labels(self, proba: np.ndarray) -> np.ndarray:
        from ..segment.train import to_labels

        return to_labels(proba, self.threshold)

    def predict_pixels(self, pixels: np.ndarray) -> list[Prediction]:
        out = []
        for p in self.proba(pixels):
            lab = self.labels(p)
            defect = (1.0 - p[0]).astype(np.float32)
            counts = np.bincount(lab.ravel(), minlength=len(self.classes))
            k = int(np.argmax(counts[1:]) + 1) if counts[1:].sum() else 0
            out.append(Prediction(self.classes[k], float(defect.max()), None, defect,
                                  {"regions": regions(lab, p, self.classes),
                                   "defect_fraction": float((lab > 0).mean())}))
        return out

    def export_onnx(self, path=None, opset: int = 17) -> Path:
        """One ONNX file: input ``images`` uint8 (N, H, W, 3) RGB at the input size; outputs ``mask`` int64
        (N, H, W) class indices and ``probabilities`` float32 (N, K, H, W)."""
        import onnx
        import torch

        from ..features.onnx_engine import export_module
        from .head import write_metadata

        net = self.net.to(memory_format=torch.contiguous_format)
        t = self.threshold

        class Exported(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.net = net

            def forward(self, images):
                logits = self.net(images.permute(0, 3, 1, 2).float())
                if logits.shape[1] == 1:
                    p1 = torch.sigmoid(logits)
                    p = torch.cat([1 - p1, p1], 1)
                    mask = (p1[:, 0] >= t).long()
                else:
                    p = torch.softmax(logits, 1)
                    mask = p.argmax(1)
                return mask, p

        pre = self.bundle.preprocessing
        out = Path(path) if path else self.bundle.path / "model.onnx"
        example = np.zeros((1, pre.height, pre.width, 3), np.uint8)
        export_module(Exported().eval(), example, out, output_names=("mask", "probabilities"))
        m = onnx.load(str(out))
        write_metadata(m, self.bundle, {"arch": self.bundle.config.get("arch"),
                                        "backbone": (self.bundle.backbone or {}).get("name")})
        onnx.checker.check_model(m)
        onnx.save(m, str(out))
        self.net.to(memory_format=torch.channels_last)
        return out


def save_segment_bundle(out, net, classes: list[str], pre, backbone: dict, config: dict, metrics: dict,
                        training: dict, extra_writers: dict | None = None) -> Bundle:
    """Write a ``unet`` bundle (task ``segment``): the whole network's weights in one safetensors file."""
    from safetensors.torch import save_file

    bundle = Bundle(task="segment", kind="unet", classes=list(classes), preprocessing=pre, backbone=backbone,
                    config={**config, "weights_file": WEIGHTS_FILE}, metrics=metrics, training=training)
    sd = {k: v.detach().to("cpu").contiguous() for k, v in net.state_dict().items()}
    save_bundle(out, bundle, {WEIGHTS_FILE: lambda p: save_file(sd, str(p)), **(extra_writers or {})})
    return bundle
