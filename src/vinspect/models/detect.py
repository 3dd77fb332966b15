"""``fcos`` models (task ``detect``): torchvision's FCOS with a feature pyramid on a registry backbone
(:mod:`vinspect.detect.model`); weights in safetensors.  ``config``: ``n_classes``, ``fpn_channels``,
``head_convs``, ``score_threshold`` (boxes kept for evaluation), ``display_threshold`` (boxes listed and drawn),
``nms_threshold``, ``max_detections`` and the training settings.

``classes`` are ``["background", <defect classes>]`` (as in segment bundles): a prediction's ``label`` is the class
of its highest-scoring box at or above ``display_threshold``, ``background`` when there is none; ``score`` that
box's score.  ``extra["boxes"]`` lists the boxes at or above ``display_threshold``: class, score, ``box``
[x0, y0, x1, y1] on the model's input grid and ``box_relative`` (fractions of the width and height, which hold
for the original image too: images are squashed onto the grid).  ``map`` (the heatmap of ``predict --maps``
and ``explain``) is each pixel's highest box score; the service and ``vinspect explain`` draw the boxes.

ONNX export writes the network (backbone, FPN, head) with its raw outputs; decoding and NMS stay in Python
(:func:`vinspect.detect.model.decode`, the same code as the torch path).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import BadInputError
from .bundle import Bundle, save_bundle
from .predictor import Explanation, Prediction, Predictor, register

WEIGHTS_FILE = "weights/detector.safetensors"
BACKGROUND = "background"


class BoxExplanation(Explanation):
    """An explanation whose picture is the boxes themselves (drawn on the image) rather than a colour map."""

    boxes: list[dict] = []

    def overlay_png(self, image, max_side: int = 512, image_weight: float = 0.55) -> bytes:
        import io

        from PIL import Image

        from ..data.decode import open_image
        from ..detect.plots import draw_boxes

        img = image if isinstance(image, Image.Image) else open_image(image)
        disp = img.convert("RGB").copy()
        disp.thumbnail((max_side, max_side), Image.Resampling.BILINEAR)
        sx, sy = disp.size[0] / img.size[0], disp.size[1] / img.size[1]
        boxes = [[b["box_original"][0] * sx, b["box_original"][1] * sy, b["box_original"][2] * sx,
                  b["box_original"][3] * sy] for b in self.boxes]
        classes = self.info.get("classes")
        arr = draw_boxes(disp, boxes, [b["class"] for b in self.boxes], [b["score"] for b in self.boxes],
                         classes=classes)
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, "PNG")
        return buf.getvalue()


@register("fcos")
class DetectPredictor(Predictor):
    """Boxes from torch (``engine`` torch); ``export_onnx`` writes the network for onnxruntime."""

    def __init__(self, bundle: Bundle, **runtime):
        super().__init__(bundle, **runtime)
        if self.engine not in (None, "torch", "auto"):
            raise BadInputError(f"--engine {self.engine}: detection models run with the torch engine; "
                                f"`vinspect export` makes an ONNX file of them")
        if bundle.task != "detect":
            raise BadInputError(f"{bundle.path}: an fcos model must have task detect, not {bundle.task}")
        if not bundle.classes or bundle.classes[0] != BACKGROUND or len(bundle.classes) < 2:
            raise BadInputError(f"{bundle.path}: an fcos model's classes are background then the defect classes")
        c = bundle.config
        self.display_threshold = float(c.get("display_threshold", 0.3))
        self.score_threshold = float(c.get("score_threshold", 0.05))
        self.net = self._load()

    @property
    def defect_classes(self) -> list[str]:
        return self.classes[1:]

    def _load(self):
        import torch
        from safetensors.torch import load_file

        from ..detect.model import build_detector

        c = self.bundle.config
        name = (self.bundle.backbone or {}).get("name")
        if not name:
            raise BadInputError(f"{self.bundle.path / 'model.json'}: an fcos model needs backbone.name")
        net, _ = build_detector(name, len(self.defect_classes), random_init=True,
                                fpn_channels=int(c.get("fpn_channels", 128)), head_convs=int(c.get("head_convs", 2)),
                                score_thresh=self.score_threshold, nms_thresh=float(c.get("nms_threshold", 0.5)),
                                detections_per_img=int(c.get("max_detections", 100)))
        p = self.bundle.file(c.get("weights_file", WEIGHTS_FILE))
        try:
            net.load_state_dict(load_file(str(p)))
        except Exception as e:  # noqa: BLE001 - a damaged or foreign file is bad input
            raise BadInputError(f"{p}: does not fit the model described in model.json ({type(e).__name__})") from None
        return net.eval().to(memory_format=torch.channels_last)

    def describe(self) -> dict:
        d = super().describe()
        d.update(arch="fcos", display_threshold=self.display_threshold, engine="torch")
        return d

    def explain_method(self) -> tuple[str, str]:
        return "boxes", "the detected boxes (score >= display threshold) drawn on the image"

    # -- boxes --------------------------------------------------------------------------------------------

    def detect_pixels(self, pixels: np.ndarray, score_thresh: float | None = None) -> list[dict]:
        """(N, H, W, 3) uint8 -> ``[{boxes (K, 4), scores (K,), labels (K,)}]`` numpy on the input grid, labels
        indexing the defect classes; every box scoring at least ``score_thresh`` (default: the evaluation one)."""
        from ..detect.train import predict_grid

        return predict_grid(self.net, pixels, batch_size=self.batch_size,
                            score_thresh=self.score_threshold if score_thresh is None else score_thresh)

    def decode_outputs(self, outputs, score_thresh: float | None = None) -> list[dict]:
        """Raw network outputs (torch or onnxruntime) -> boxes, with the same code as :meth:`detect_pixels`."""
        from ..detect.model import decode

        res = decode(self.net, outputs, self.preprocessing.size_hw,
                     self.score_threshold if score_thresh is None else score_thresh)
        return [{k: v.cpu().numpy() for k, v in d.items()} for d in res]

    def _boxes(self, d: dict) -> list[dict]:
        h, w = self.preprocessing.size_hw
        out = []
        for b, s, k in zip(d["boxes"], d["scores"], d["labels"]):
            if s < self.display_threshold:
                continue
            out.append({"class": self.defect_classes[int(k)], "score": round(float(s), 4),
                        "box": [round(float(v), 1) for v in b],
                        "box_relative": [round(float(b[0]) / w, 4), round(float(b[1]) / h, 4),
                                         round(float(b[2]) / w, 4), round(float(b[3]) / h, 4)]})
        out.sort(key=lambda r: -r["score"])
        return out

    def predict_pixels(self, pixels: np.ndarray) -> list[Prediction]:
        out = []
        for d in self.detect_pixels(pixels, self.display_threshold):
            boxes = self._boxes(d)
            m = np.zeros(self.preprocessing.size_hw, np.float32)
            for b in boxes:
                x0, y0, x1, y1 = (int(round(v)) for v in b["box"])
                m[y0:y1 + 1, x0:x1 + 1] = np.maximum(m[y0:y1 + 1, x0:x1 + 1], b["score"])
            label = boxes[0]["class"] if boxes else BACKGROUND
            score = boxes[0]["score"] if boxes else 0.0
            out.append(Prediction(label, float(score), None, m, {"boxes": boxes, "n_boxes": len(boxes),
                                                                "display_threshold": self.display_threshold}))
        return out

    def display_scale(self, pred: Prediction) -> float | None:
        return 1.0  # box scores are probabilities: a weak box stays cool

    def explain(self, source, label: str | None = None) -> Explanation:
        from ..data.decode import open_image

        data = Path(source).read_bytes() if isinstance(source, (str, Path)) else source
        img = open_image(data)
        pred = self.predict_pixels(self.decode(data)[None])[0]
        w, h = img.size
        boxes = [dict(b, box_original=[b["box_relative"][0] * w, b["box_relative"][1] * h,
                                       b["box_relative"][2] * w, b["box_relative"][3] * h])
                 for b in pred.extra["boxes"] if label in (None, BACKGROUND) or b["class"] == label]
        m = np.clip(self.preprocessing.to_original(pred.map, w, h), 0, 1).astype(np.float32)
        from .predictor import peak_xy

        e = BoxExplanation(m, label or pred.label, "boxes", pred.score, peak_xy(m),
                           {"method": "boxes", "image_size": [w, h], "classes": self.defect_classes,
                            "boxes": [{k: v for k, v in b.items() if k != "box"} for b in boxes]})
        e.boxes = boxes
        return e

    def export_onnx(self, path=None, opset: int = 17) -> Path:
        """One ONNX file: input ``images`` uint8 (N, H, W, 3) RGB at the input size; outputs ``cls_logits``
        (N, A, C), ``bbox_regression`` (N, A, 4) and ``bbox_ctrness`` (N, A, 1) over the A locations of the five
        pyramid levels (FCOS's raw head outputs; decode them with :meth:`decode_outputs`)."""
        import onnx
        import torch

        from ..detect.model import OUTPUTS
        from ..features.onnx_engine import export_module
        from .head import write_metadata

        net = self.net.to(memory_format=torch.contiguous_format)

        class Exported(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.net = net

            def forward(self, images):
                return self.net(images.permute(0, 3, 1, 2).float())

        pre = self.bundle.preprocessing
        out = Path(path) if path else self.bundle.path / "model.onnx"
        example = np.zeros((1, pre.height, pre.width, 3), np.uint8)
        try:
            export_module(Exported().eval(), example, out, output_names=OUTPUTS)
        finally:
            self.net.to(memory_format=torch.channels_last)
        m = onnx.load(str(out))
        anchors, per_level = self.net.levels(pre.size_hw)
        write_metadata(m, self.bundle, {"arch": "fcos", "backbone": (self.bundle.backbone or {}).get("name"),
                                        "locations_per_level": per_level,
                                        "decode": "vinspect.detect.model.decode (FCOS post-processing + NMS)"})
        onnx.checker.check_model(m)
        onnx.save(m, str(out))
        return out


def save_detect_bundle(out, net, classes: list[str], pre, backbone: dict, config: dict, metrics: dict,
                       training: dict, extra_writers: dict | None = None) -> Bundle:
    """Write an ``fcos`` bundle (task ``detect``); ``classes`` are the defect classes (background is added)."""
    from safetensors.torch import save_file

    bundle = Bundle(task="detect", kind="fcos", classes=[BACKGROUND, *classes], preprocessing=pre, backbone=backbone,
                    config={**config, "weights_file": WEIGHTS_FILE}, metrics=metrics, training=training)
    sd = {k: v.detach().to("cpu").contiguous() for k, v in net.state_dict().items()}
    save_bundle(out, bundle, {WEIGHTS_FILE: lambda p: save_file(sd, str(p)), **(extra_writers or {})})
    return bundle
