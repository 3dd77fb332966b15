"""``head`` models: CNN features from a layer of a pretrained backbone + a scikit-learn head (the lab pipeline).

Files: ``head.skops`` (the fitted ``StandardScaler`` + classifier pipeline) and, for int8 models, the quantised
backbone ``backbone_int8.onnx``.  The skops file is opened only after every type in it has been checked
against an exact allow-list (the estimators :mod:`vinspect.heads.factory` makes and the NumPy arrays they
hold): a function, a ``FunctionTransformer`` or any other object is refused before anything is built.
"""

from __future__ import annotations

import json
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from ..errors import BadInputError
from .bundle import Bundle, Preprocessing, save_bundle
from .predictor import Prediction, Predictor, register

HEAD_FILE = "head.skops"

# every (type, skops loader) a head of vinspect.heads.factory contains, and nothing else
SKOPS_ALLOWED = {
    ("builtins.dict", "DictNode"), ("builtins.list", "ListNode"), ("builtins.tuple", "TupleNode"),
    ("builtins.str", "JsonNode"), ("builtins.int", "JsonNode"), ("builtins.float", "JsonNode"),
    ("builtins.bool", "JsonNode"), ("builtins.NoneType", "JsonNode"), ("builtins.str", "TypeNode"),
    ("numpy.ndarray", "NdArrayNode"), ("numpy.float64", "NdArrayNode"), ("numpy.float32", "NdArrayNode"),
    ("numpy.int64", "NdArrayNode"), ("numpy.int32", "NdArrayNode"),
    ("sklearn.pipeline.Pipeline", "ObjectNode"),
    ("sklearn.preprocessing._data.StandardScaler", "ObjectNode"),
    ("sklearn.linear_model._logistic.LogisticRegression", "ObjectNode"),
    ("sklearn.svm._classes.SVC", "ObjectNode"),
    ("sklearn.calibration.CalibratedClassifierCV", "ObjectNode"),
    ("sklearn.calibration._CalibratedClassifier", "ObjectNode"),
    ("sklearn.calibration._SigmoidCalibration", "ObjectNode"),
    ("sklearn.neighbors._classification.KNeighborsClassifier", "ObjectNode"),
    ("sklearn.neighbors._kd_tree.KDTree", "ObjectNode"),
    ("sklearn.metrics._dist_metrics.EuclideanDistance64", "ObjectNode"),
    # the random forest head (rf): its trees are skops TreeNodes (arrays of nodes and values, no code)
    ("sklearn.ensemble._forest.RandomForestClassifier", "ObjectNode"),
    ("sklearn.tree._classes.DecisionTreeClassifier", "ObjectNode"),
    ("sklearn.tree._tree.Tree", "TreeNode"),
}


def skops_types(path: Path) -> set[tuple[str, str]]:
    """Every (type, loader) named in a skops file's schema, read as JSON (nothing is built)."""
    try:
        with zipfile.ZipFile(path) as z:
            schema = json.loads(z.read("schema.json"))
    except (OSError, KeyError, zipfile.BadZipFile, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BadInputError(f"{path}: unreadable skops file ({e})") from None
    found: set[tuple[str, str]] = set()

    def walk(o):
        if isinstance(o, dict):
            if "__loader__" in o:
                found.add((f"{o.get('__module__')}.{o.get('__class__')}", str(o["__loader__"])))
            for v in o.values():
                walk(v)
        elif isinstance(o, list):
            for v in o:
                walk(v)

    walk(schema)
    return found


def load_head(path: Path):
    """The scikit-learn head in a skops file, refused unless every type in it is on the allow-list."""
    import skops.io as sio

    refused = sorted(f"{t} ({loader})" for t, loader in skops_types(path) - SKOPS_ALLOWED)
    if refused:
        raise BadInputError(f"{path}: refuses to load types outside vinspect's heads: {', '.join(refused[:5])}")
    try:
        return sio.load(path, trusted=sio.get_untrusted_types(file=path))
    except Exception as e:  # noqa: BLE001 - a damaged file is bad input
        raise BadInputError(f"{path}: unreadable skops file ({type(e).__name__}: {e})") from None


@register("head")
class HeadPredictor(Predictor):
    """Features of the bundle's backbone layer (any engine) -> the scikit-learn head's probabilities."""

    def __init__(self, bundle: Bundle, **runtime):
        super().__init__(bundle, **runtime)
        cfg = bundle.config
        path = bundle.file(cfg.get("head_file", HEAD_FILE))
        if not path.is_file():
            raise BadInputError(f"{path}: missing head file")
        self.head = load_head(path)
        seen = getattr(self.head, "classes_", None)
        n = len(bundle.classes)
        if seen is None or len(seen) != n or not np.array_equal(np.asarray(seen), np.arange(n)):
            raise BadInputError(f"{bundle.path / 'model.json'}: lists {n} classes but the head predicts "
                                f"{0 if seen is None else len(seen)} ({path.name})")
        self._extractor = None
        self._cam = None

    @property
    def extractor(self):
        """The feature extractor the head was trained with; refuses weights that differ from the recorded ones."""
        if self._extractor is None:
            from ..backbones.registry import get_spec
            from ..features.extract import DEFAULT_ENGINE, Extractor

            b, cfg, pre = self.bundle.backbone or {}, self.bundle.config, self.bundle.preprocessing
            kw = {"engine": self.engine or DEFAULT_ENGINE}
            precision = self.precision
            if precision is None and cfg.get("precision") == "bf16" and kw["engine"] in ("auto", "openvino"):
                precision = "bf16"  # the head was fitted on bf16 features: predict with the same
            if precision:
                kw["precision"] = precision
            if cfg.get("quantize"):  # an int8 bundle carries its quantised backbone: the features depend on it
                kw.update(engine="onnx", quantize=cfg["quantize"], onnx_file=self.bundle.file(cfg["backbone_onnx"]))
                kw.pop("precision", None)
            tiles = b.get("tiles")
            if tiles:  # a canvas of rows x cols square tiles
                rows, cols = int(tiles[0]), int(tiles[1])
                side = pre.height // rows
                if rows * side != pre.height or cols * side != pre.width:
                    raise BadInputError(f"{self.bundle.path}: input {pre.width}x{pre.height} is not a grid of "
                                        f"{rows}x{cols} square tiles")
                kw["tiles"] = (rows, cols, tiles[2])
            elif pre.square is None:
                raise BadInputError(f"{self.bundle.path}: head models take square inputs, not {pre.width}x{pre.height}")
            else:
                side = pre.square
            weights = self.weights or (b.get("weights_path") if not get_spec(b["name"]).weights and
                                       b.get("weights_path") else None)
            ex = Extractor(b["name"], b["layer"], b["pool"], image_size=side, resize=pre.resize,
                           weights=weights, random_init=b.get("random_init", False), batch_size=self.batch_size,
                           device=self.device, **kw)
            epre = ex.preprocessing
            if (tuple(epre.mean), tuple(epre.std), epre.interpolation) != (pre.mean, pre.std, pre.interpolation):
                raise BadInputError(f"{self.bundle.path / 'model.json'}: preprocessing mean/std/interpolation "
                                    f"{list(pre.mean)}/{list(pre.std)}/{pre.interpolation} differ from the "
                                    f"{b['name']} backbone's {list(epre.mean)}/{list(epre.std)}/{epre.interpolation}, "
                                    f"which its features need")
            if ex.weights_sha256 != b.get("weights_sha256"):
                raise BadInputError(f"the {b['name']} weights on this machine (sha256 {str(ex.weights_sha256)[:12]}) "
                                    f"differ from those the model was trained with "
                                    f"({str(b.get('weights_sha256'))[:12]}); pass the right file with --weights")
            self._extractor = ex
        return self._extractor

    def describe(self) -> dict:
        d = super().describe()
        b = self.bundle.backbone or {}
        d.update(layer=b.get("layer"), pool=b.get("pool"), tiles=b.get("tiles"), head=self.bundle.config.get("head"),
                 feature_dim=self.bundle.config.get("feature_dim"), engine=self.extractor.engine_name)
        return d

    def predict_pixels(self, pixels: np.ndarray) -> list[Prediction]:
        proba = self.head.predict_proba(self.extractor.features(pixels))
        classes = self.classes
        out = []
        for p in proba:
            k = int(np.argmax(p))
            out.append(Prediction(classes[k], float(p[k]), {c: float(v) for c, v in zip(classes, p)}))
        return out

    # -- explanations ---------------------------------------------------------------------------------

    def explain_method(self) -> tuple[str, str]:
        from sklearn.linear_model import LogisticRegression

        clf = self.head.steps[-1][1] if hasattr(self.head, "steps") else self.head
        q = self.bundle.config.get("quantize")
        note = f"; drawn with the float32 network (the served backbone is {q})" if q else ""
        if isinstance(clf, LogisticRegression):
            return "layer-cam", ("LayerCAM over the model's layer and the two stages before it, through the "
                                 "logistic regression head rebuilt exactly in torch" + note)
        return "ablation-cam", (f"{type(clf).__name__} head is not differentiable in closed form: channel "
                                f"ablation with the real head" + note)

    def _cam_net(self):
        if self._cam is None:
            from ..backbones.pooling import pool
            from ..explain.gradcam import _torch, cam_net, explain_layers, linear_head

            torch = _torch()
            fnet = self.extractor.torch_net().to("cpu").to(memory_format=torch.contiguous_format).eval()
            fnet.requires_grad_(False)  # gradients are needed w.r.t. activations only
            method, _ = self.explain_method()
            lin, mode = (linear_head(self.head, len(self.classes)) if method == "layer-cam" else (None, None))
            pooling = fnet.pooling
            names, modules = [], []
            if lin is not None:  # the backbone's own modules, so that its stages can be hooked
                model = self.extractor._build().model
                fnet = fnet.plain(model)
                names = explain_layers(model, fnet.layer)
                modules = [model.get_submodule(n) for n in names]

            class Head(torch.nn.Module):
                def __init__(self):
                    super().__init__()
                    self.lin = lin if lin is not None else torch.nn.Identity()

                def forward(self, a):
                    return self.lin(pool(a, pooling))

            self._cam = (cam_net(fnet.spatial, Head()), lin, mode, modules, names)
        return self._cam

    def explain_pixels(self, pixels: np.ndarray, label: str | None = None):
        from ..explain.gradcam import ablation_cam, layer_cam

        pred, k = self.explanation_target(pixels, label)
        b = self.bundle.backbone or {}
        if "+" in str(b.get("layer")) or b.get("pool") == "gem" or b.get("tiles"):
            from ..explain.gradcam import HeatmapUnavailable

            raise HeatmapUnavailable(f"no heatmap yet for {b.get('layer')} with {b.get('pool')} pooling"
                                     f"{' over tiles' if b.get('tiles') else ''} (several layers joined, GeM "
                                     f"pooling or tiles, as --auto may choose)")
        net, lin, mode, modules, names = self._cam_net()
        method, why = self.explain_method()
        if lin is not None:
            mask, p = layer_cam(net, modules, pixels, k, proba=lin.proba)
            info = {"method": "layer-cam", "probability": p, "layers": names, "logit_mode": mode}
        else:
            import torch

            x = torch.from_numpy(np.ascontiguousarray(pixels)).permute(2, 0, 1)[None].float()
            with torch.no_grad():
                a = net.activations(x)
            if a.ndim != 4:
                from ..explain.gradcam import HeatmapUnavailable

                raise HeatmapUnavailable(f"layer {self.extractor.layer} has no spatial map")
            mask, p = ablation_cam(a[0].numpy().astype(np.float64), self.extractor.pool, self.head.predict_proba,
                                   k, pixels.shape[:2])
            info = {"method": "ablation-cam", "probability": p, "map_size": list(a.shape[2:])}
        info.update(label=self.classes[k], why=why)
        return mask, pred, info

    # -- export ---------------------------------------------------------------------------------------

    def export_onnx(self, path=None, opset: int = 17) -> Path:
        """One ONNX file: backbone (normalisation, layer cut, pooling) + head (skl2onnx).

        input ``images`` uint8 (N, H, W, 3) RGB at the input size; outputs ``label`` int64 (N,) (index into the
        metadata ``classes``, a JSON list) and ``probabilities`` float32 (N, K)."""
        import onnx
        from onnx import compose
        from skl2onnx import convert_sklearn
        from skl2onnx.common.data_types import FloatTensorType

        from ..features.onnx_engine import export_module

        out = Path(path) if path else self.bundle.path / "model.onnx"
        ex = self.extractor
        cfg = self.bundle.config
        with tempfile.TemporaryDirectory() as tmp:
            if cfg.get("quantize"):
                backbone = onnx.load(str(ex.onnx_path))
            else:
                p = export_module(ex.torch_net(), np.zeros((2, *ex.input_hw, 3), np.uint8), Path(tmp) / "backbone.onnx")
                backbone = onnx.load(str(p))
        dim = int(cfg["feature_dim"])
        clf = self.head.steps[-1][1]
        try:
            head = convert_sklearn(self.head, initial_types=[("features", FloatTensorType([None, dim]))],
                                   options={id(clf): {"zipmap": False}}, target_opset={"": opset, "ai.onnx.ml": 3})
        except Exception as e:  # noqa: BLE001 - name the head that skl2onnx cannot convert
            raise BadInputError(f"{self.bundle.path}: head {cfg['head']['name']} cannot be converted to ONNX "
                                f"({e})") from None
        head = compose.add_prefix(head, prefix="head_")
        backbone_opsets = {o.domain: o.version for o in backbone.opset_import}
        for o in head.opset_import:  # align opset imports so the graphs can be merged
            if o.domain in ("", "ai.onnx") and o.version != backbone_opsets.get("", o.version):
                o.version = backbone_opsets[""]
        head.ir_version = backbone.ir_version
        merged = compose.merge_models(backbone, head, io_map=[("features", "head_features")])
        names = {o.name: o for o in merged.graph.output}
        rename = {next(n for n in names if n.endswith("label")): "label",
                  next(n for n in names if n.endswith("probabilities")): "probabilities"}
        for node in merged.graph.node:
            node.input[:] = [rename.get(i, i) for i in node.input]
            node.output[:] = [rename.get(o, o) for o in node.output]
        for old, new in rename.items():
            names[old].name = new
        b = self.bundle.backbone
        extra = {"backbone": b["name"], "layer": b["layer"], "pool": b["pool"], "head": cfg["head"]["name"],
                 "weights_sha256": str(b["weights_sha256"])}
        if b.get("tiles"):
            extra["tiles"] = json.dumps(b["tiles"])
        write_metadata(merged, self.bundle, extra)
        onnx.checker.check_model(merged)
        out.parent.mkdir(parents=True, exist_ok=True)
        onnx.save(merged, str(out))
        return out


def write_metadata(model, bundle: Bundle, extra: dict) -> None:
    """vinspect's metadata on an exported ONNX model: classes, preprocessing, task, kind, and ``extra``."""
    pre = bundle.preprocessing
    legacy = {"input_size": pre.square or [pre.height, pre.width], "interpolation": pre.interpolation,
              "mean": list(pre.mean), "std": list(pre.std), "resize": pre.resize}
    for k, v in {"classes": json.dumps(bundle.classes), "preprocessing": json.dumps(legacy),
                 "preprocessing_v2": json.dumps(pre.as_dict()), "task": bundle.task, "kind": bundle.kind,
                 **extra, "producer": "vinspect"}.items():
        model.metadata_props.add(key=k, value=str(v))


def save_head_bundle(out, head, extractor, head_cfg: dict, feature_dim: int, metrics: dict, training: dict) -> Bundle:
    """Write a ``head`` bundle for a fitted scikit-learn ``head`` on ``extractor``'s features."""
    import shutil

    import skops.io as sio

    pre = extractor.preprocessing
    h, w = extractor.input_hw  # the square input, or the canvas of tiles
    backbone = {"name": extractor.backbone, "arch": extractor.spec.arch, "layer": extractor.layer,
                "pool": extractor.pool, "weights_sha256": extractor.weights_sha256,
                "weights_path": extractor.weights_path, "random_init": bool(extractor.random_init)}
    if extractor.tiles:
        backbone["tiles"] = list(extractor.tiles)  # [rows, cols, max|mean]: see features.torch_engine.TiledNet
    bundle = Bundle(
        task="classify", kind="head", classes=list(training.pop("classes")),
        preprocessing=Preprocessing(width=w, height=h, resize=pre.resize, colour="rgb",
                                    mean=tuple(pre.mean), std=tuple(pre.std), interpolation=pre.interpolation),
        backbone=backbone,
        config={"head": head_cfg, "head_file": HEAD_FILE, "feature_dim": int(feature_dim),
                **extractor.engine_info(), "quantize": extractor.quantize},
        metrics=metrics, training=training)
    writers = {HEAD_FILE: lambda p: sio.dump(head, p)}
    if extractor.quantize:
        bundle.config["backbone_onnx"] = "backbone_int8.onnx"
        src = extractor.onnx_path
        writers["backbone_int8.onnx"] = lambda p: shutil.copyfile(src, p)
    save_bundle(out, bundle, writers)
    return bundle
