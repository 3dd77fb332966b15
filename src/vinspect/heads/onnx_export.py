"""Export a model bundle as one ONNX file: backbone (normalisation, layer cut, pooling) + head.

The head is converted with skl2onnx (scaler and classifier: logistic regression, calibrated SVMs, k-NN),
then joined to the backbone's graph.  Anyone with onnxruntime can run the file without vinspect:

    input  ``images``        uint8 (N, H, W, 3) RGB, resized to the model's input size (metadata ``preprocessing``)
    output ``label``         int64 (N,) index into the metadata ``classes`` (a JSON list)
    output ``probabilities`` float32 (N, K)
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np

from ..errors import BadInputError
from .bundle import load_bundle


def export_onnx(model_dir, out=None, opset: int = 17) -> Path:
    import onnx
    from onnx import compose
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    from ..features.onnx_engine import export_module
    from ..pipeline import extractor_for

    bundle = load_bundle(model_dir)
    meta = bundle.meta
    if meta.get("method", "head") != "head":
        raise BadInputError(f"{model_dir}: only feature + classifier bundles export to ONNX so far")
    out = Path(out) if out else Path(model_dir) / "model.onnx"
    ex = extractor_for(bundle)
    size = ex.preprocessing.input_size
    with tempfile.TemporaryDirectory() as tmp:
        if meta.get("quantize"):
            backbone = onnx.load(str(ex.onnx_path))
        else:
            p = export_module(ex.torch_net(), np.zeros((2, size, size, 3), np.uint8), Path(tmp) / "backbone.onnx")
            backbone = onnx.load(str(p))
    dim = int(meta["feature_dim"])
    clf = bundle.head.steps[-1][1]
    try:
        head = convert_sklearn(bundle.head, initial_types=[("features", FloatTensorType([None, dim]))],
                               options={id(clf): {"zipmap": False}},
                               target_opset={"": opset, "ai.onnx.ml": 3})
    except Exception as e:  # noqa: BLE001 - name the head that skl2onnx cannot convert
        raise BadInputError(f"{model_dir}: head {meta['head']['name']} cannot be converted to ONNX ({e})") from None
    head = compose.add_prefix(head, prefix="head_")
    # align opset imports so the graphs can be merged
    backbone_opsets = {o.domain: o.version for o in backbone.opset_import}
    for o in head.opset_import:
        if o.domain in ("", "ai.onnx") and o.version != backbone_opsets.get("", o.version):
            o.version = backbone_opsets[""]
    head.ir_version = backbone.ir_version
    merged = compose.merge_models(backbone, head, io_map=[("features", "head_features")])
    names = {o.name: o for o in merged.graph.output}
    label_out = next(n for n in names if n.endswith("label"))
    prob_out = next(n for n in names if n.endswith("probabilities"))
    rename = {label_out: "label", prob_out: "probabilities"}
    for node in merged.graph.node:
        node.input[:] = [rename.get(i, i) for i in node.input]
        node.output[:] = [rename.get(o, o) for o in node.output]
    for old, new in rename.items():
        names[old].name = new
    for k, v in {"classes": json.dumps(bundle.classes), "preprocessing": json.dumps(meta["preprocessing"]),
                 "backbone": meta["backbone"], "layer": meta["layer"], "pool": meta["pool"],
                 "head": meta["head"]["name"], "weights_sha256": str(meta["weights"]["sha256"]),
                 "producer": "vinspect"}.items():
        merged.metadata_props.add(key=k, value=v)
    onnx.checker.check_model(merged)
    out.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(merged, str(out))
    return out
