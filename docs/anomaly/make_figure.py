"""The README's picture: PatchCore maps (vinspect defaults) on real magnetic-tile defects.

    nice -n 10 .venv/bin/python docs/anomaly/make_figure.py   # -> docs/anomaly/magnetic-tile-maps.png

Fitted on 150 defect-free tiles of the training part of the benchmark's split 0 (a subset, to draw it quickly on
a shared CPU; the threshold as in train); shown: the first two test images of
each defect class (by file name, not picked by score), ground truth outlined in white, one colour scale."""

from pathlib import Path

import numpy as np
import torch

from vinspect.anomaly import plots
from vinspect.anomaly.data import find_masks, load_anomaly_data, load_mask
from vinspect.anomaly.features import decode_all
from vinspect.anomaly.protocol import _split_normal, _with_spec, fit_threshold
from vinspect.anomaly.model import AnomalyModel

MT = Path(__file__).resolve().parents[3] / "shared" / "datasets" / "magnetic-tile"
data = load_anomaly_data(MT / "images", "free", need_anomalous=True)
masks = find_masks(MT / "masks", data)
model = AnomalyModel("patchcore", **_with_spec(None, data))
normal = np.nonzero(data.anomalous == 0)[0]
train, _ = _split_normal(normal, 0.7, np.random.default_rng(0))
train = train[:150]
dec = decode_all([data.paths[i] for i in train], model.spec, progress=False)
feats = model.features(dec.pixels)
fit_threshold(model, feats, 0.99, 0)
show = []
for cls in ("blowhole", "break", "crack", "fray", "uneven"):
    show += [i for i in range(len(data.paths)) if data.classes[i] == cls][:2]
d = decode_all([data.paths[i] for i in show], model.spec, progress=False)
maps, scores = model.score(d.pixels)
items = []
for k, i in enumerate(show):
    h, w = model.spec.height, model.spec.width
    # the mask onto the input grid the same way the image went (squash or letterbox)
    from vinspect.anomaly.features import letterbox_box

    ow, oh = d.sizes[k]
    x0, y0, nw, nh = letterbox_box(ow, oh, w, h) if model.spec.resize == "letterbox" else (0, 0, w, h)
    m = load_mask(masks.get(i), nw, nh)
    grid = np.zeros((h, w), bool)
    grid[y0:y0 + nh, x0:x0 + nw] = m
    items.append({"pixels": d.pixels[k], "map": maps[k], "score": float(scores[k]), "path": str(data.paths[i]),
                  "anomalous": 1, "mask": grid})
out = Path(__file__).with_name("magnetic-tile-maps.png")
plots.maps_grid_png(items, out, title=f"PatchCore maps on real magnetic-tile defects, fitted on 150 defect-free tiles (threshold {model.threshold:.3g}; "
                    "white: ground truth)", cols=5)
print(out, [round(s, 2) for s in scores], model.threshold)
