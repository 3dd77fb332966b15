"""Detection: the NMS kernel behind the torchvision guard, the three annotation readers on real NEU-DET boxes,
bad annotations (named, skipped, refused), augmentation moving boxes, training with the shared loop, the detect
bundle through predict / explain / serve / export (ONNX boxes = torch boxes), and the CLI, on a tiny real subset."""

from __future__ import annotations

import contextlib
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from vinspect.errors import BadInputError

from conftest import NEU, SHARED
from conftest import need as _need

ANN = SHARED / "neu-det-annotations"
CLASSES = ("crazing", "inclusion", "patches", "pitted_surface", "rolled-in_scale", "scratches")


@pytest.fixture(scope="module")
def neu_det(tmp_path_factory) -> Path:
    """A real NEU-DET subset: 4 images per class (24) with their VOC files."""
    src, ann = _need(NEU), _need(ANN)
    dst = tmp_path_factory.mktemp("neu_det")
    for c in CLASSES:
        (dst / "images" / c).mkdir(parents=True)
        for i in range(1, 5):
            shutil.copy(src / c / f"{c}_{i}.jpg", dst / "images" / c)
    (dst / "voc").mkdir()
    for p in (dst / "images").rglob("*.jpg"):
        shutil.copy(ann / f"{p.stem}.xml", dst / "voc")
    return dst


@pytest.fixture(scope="module")
def tiny_model(neu_det, tmp_path_factory) -> Path:
    """A detector trained for 2 epochs on the 24 real images at 96 px (seconds): for the plumbing, not accuracy."""
    from vinspect.detect.annotations import load_annotations
    from vinspect.detect.train import DetectConfig
    from vinspect.pipeline.detect import train_bundle

    out = tmp_path_factory.mktemp("det_model") / "model"
    data = load_annotations(neu_det / "images", neu_det / "voc")
    # one thread: the same model every run (multi-threaded kernels sum in a varying order, and a half-trained
    # detector has near-tied overlapping boxes that the ONNX comparison below must not meet)
    with _one_thread():
        train_bundle(data, DetectConfig(input_size=96, epochs=2, val_fraction=0.2, batch_size=8, seed=0), out,
                     progress=False)
    return out


@contextlib.contextmanager
def _one_thread():
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


# ------------------------------------------------------------------------------------------------ NMS kernel


def test_nms_kernel_matches_the_greedy_rule_and_torchvision_reaches_it():
    import torch

    from vinspect._torchvision_guard import ensure_nms, nms_reference

    ensure_nms()
    import torchvision

    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 80, (300, 2))
    wh = rng.uniform(4, 40, (300, 2))
    boxes = torch.tensor(np.hstack([xy, xy + wh]), dtype=torch.float32)
    scores = torch.tensor(rng.uniform(0, 1, 300), dtype=torch.float32)
    keep = torchvision.ops.nms(boxes, scores, 0.5)
    assert torch.equal(keep, nms_reference(boxes, scores, 0.5))
    # the greedy rule by hand: every kept box beats every later box it overlaps by more than 0.5
    iou = torchvision.ops.box_iou(boxes, boxes)
    kept = keep.tolist()
    assert all(scores[a] >= scores[b] for a, b in zip(kept, kept[1:]))
    for i, a in enumerate(kept):
        assert all(iou[a, b] <= 0.5 for b in kept[i + 1:])
    dropped = sorted(set(range(300)) - set(kept))
    assert all(any(iou[d, k] > 0.5 and scores[k] >= scores[d] for k in kept) for d in dropped)
    # batched (class-wise) NMS keeps overlapping boxes of different classes
    two = torch.tensor([[0, 0, 10, 10], [1, 1, 10, 10]], dtype=torch.float32)
    s = torch.tensor([0.9, 0.8])
    assert torchvision.ops.batched_nms(two, s, torch.tensor([0, 0]), 0.5).tolist() == [0]
    assert torchvision.ops.batched_nms(two, s, torch.tensor([0, 1]), 0.5).tolist() == [0, 1]
    assert nms_reference(torch.zeros(0, 4), torch.zeros(0), 0.5).numel() == 0


# ------------------------------------------------------------------------------------------------ annotations


def test_voc_yolo_and_coco_readers_give_the_same_boxes(neu_det, tmp_path):
    from vinspect.detect.annotations import load_annotations, write_coco, write_yolo

    voc = load_annotations(neu_det / "images", neu_det / "voc")
    assert voc.fmt == "voc" and len(voc.items) == 24 and not voc.problems
    assert voc.classes == list(CLASSES)
    it = next(i for i in voc.items if i.relpath == "crazing/crazing_1.jpg")
    assert it.labels == ["crazing"] and np.allclose(it.boxes, [[2, 2, 193, 194]])  # crazing_1.xml
    yolo = load_annotations(neu_det / "images", write_yolo(voc.items, voc.classes, tmp_path / "yolo"))
    coco = load_annotations(neu_det / "images", write_coco(voc.items, voc.classes, tmp_path / "coco.json"))
    assert yolo.fmt == "yolo" and coco.fmt == "coco"
    for other in (yolo, coco):
        assert other.classes == voc.classes and not other.problems
        for a, b in zip(voc.items, other.items):
            assert a.relpath == b.relpath and a.labels == b.labels
            assert np.allclose(a.boxes, b.boxes, atol=0.01)


def test_bad_annotations_are_named_skipped_and_listed(neu_det, tmp_path):
    from vinspect.detect.annotations import load_annotations

    ann = tmp_path / "voc"
    shutil.copytree(neu_det / "voc", ann)
    (ann / "crazing_1.xml").write_text("<annotation><object>")  # does not parse
    (ann / "crazing_2.xml").write_bytes(b"")  # empty
    x = (ann / "inclusion_1.xml").read_text()
    x = x.replace("<name>inclusion</name>", "<name>rust</name>", 1)  # unknown class on the first box
    (ann / "inclusion_1.xml").write_text(x)
    p = (ann / "patches_1.xml").read_text()
    first = p.index("<xmax>")
    p = p[:first] + "<xmax>950</xmax>" + p[p.index("</xmax>", first) + len("</xmax>"):]  # outside the image
    (ann / "patches_1.xml").write_text(p)
    (ann / "scratches_4.xml").unlink()  # image without annotations
    data = load_annotations(neu_det / "images", ann, classes=list(CLASSES))
    lines = [pr.line() for pr in data.problems]
    assert any("crazing_1.xml" in ln and "does not parse" in ln for ln in lines)
    assert any("crazing_2.xml" in ln and "empty annotation file" in ln for ln in lines)
    assert any("inclusion_1.jpg" in ln and "unknown class 'rust'" in ln for ln in lines)
    assert any("patches_1.jpg" in ln and "outside the 200x200 image" in ln for ln in lines)
    assert any("scratches_4.jpg" in ln and "no annotation file" in ln for ln in lines)
    assert all("\n" not in ln for ln in lines)
    rels = {i.relpath for i in data.items}
    assert "crazing/crazing_1.jpg" not in rels and "scratches/scratches_4.jpg" not in rels
    assert len(data.items) == 24 - 3 - (0 if "inclusion/inclusion_1.jpg" in rels else 1) - \
        (0 if "patches/patches_1.jpg" in rels else 1)


def test_nothing_usable_is_refused(neu_det, tmp_path):
    from vinspect.detect.annotations import load_annotations

    empty = tmp_path / "voc"
    empty.mkdir()
    for p in (neu_det / "voc").glob("*.xml"):
        (empty / p.name).write_text("not xml at all")
    with pytest.raises(BadInputError, match="no usable boxes"):
        load_annotations(neu_det / "images", empty)
    (tmp_path / "no-files").mkdir()
    with pytest.raises(BadInputError, match="no .xml"):
        load_annotations(neu_det / "images", tmp_path / "no-files")


def test_augmentation_moves_boxes_with_the_image():
    import torch

    from vinspect.training.augment import parse_augment

    img = torch.zeros(3, 64, 96, dtype=torch.uint8)
    img[:, 10:20, 5:30] = 255  # a bright box at x 5..30, y 10..20
    t = {"boxes": torch.tensor([[5.0, 10.0, 30.0, 20.0]]), "labels": torch.tensor([3])}
    flip = parse_augment("hflip=1,vflip=1").build((64, 96), with_boxes=True)
    x, out = flip(img, t)
    assert torch.allclose(out["boxes"], torch.tensor([[66.0, 44.0, 91.0, 54.0]]))
    assert out["labels"].tolist() == [3]
    ys, xs = torch.nonzero(x[0] > 128, as_tuple=True)
    assert (xs.min(), xs.max() + 1, ys.min(), ys.max() + 1) == (66, 91, 44, 54)  # the pixels went with the box


# ------------------------------------------------------------------------------------------------ model


def test_train_writes_a_detect_bundle_with_history_and_curves(tiny_model):
    from vinspect.models.bundle import load_bundle

    b = load_bundle(tiny_model)
    assert b.task == "detect" and b.kind == "fcos"
    assert b.classes == ["background", *CLASSES]
    assert b.backbone["name"] == "efficientnet_lite0" and len(b.backbone["weights_sha256"]) == 64
    hist = json.loads((tiny_model / "training" / "history.json").read_text())
    assert len(hist) == 2 and all("val_loss" in h and "val_map50" in h for h in hist)
    assert (tiny_model / "training" / "curves.png").stat().st_size > 1000
    assert b.training["n_boxes"] > 24


def test_training_resumes_from_its_checkpoint(neu_det, tmp_path):
    from vinspect.detect.annotations import load_annotations
    from vinspect.detect.train import DetectConfig, load_grid, preprocessing_for, train_detector

    data = load_annotations(neu_det / "images", neu_det / "voc")
    cfg = DetectConfig(input_size=64, epochs=1, val_fraction=0.2)
    pre = preprocessing_for(cfg, (64, 64))
    images, targets = load_grid(data, pre, progress=False)
    ck = tmp_path / "ck.pt"
    _, r1 = train_detector(images, targets, 6, cfg, data.strata, checkpoint=ck, progress=False)
    assert ck.is_file() and r1["resumed_from"] is None
    cfg2 = DetectConfig(input_size=64, epochs=1, val_fraction=0.2)
    _, r2 = train_detector(images, targets, 6, cfg2, data.strata, checkpoint=ck, progress=False)
    assert r2["resumed_from"] is not None and len(r2["history"]) == 1  # nothing retrained


def test_predict_explain_and_export_accept_the_detect_bundle(tiny_model, neu_det, tmp_path):
    from vinspect.models.predictor import load_predictor

    pred = load_predictor(tiny_model)
    rows, skipped = pred.predict([neu_det / "images" / "patches"], progress=False)
    assert len(rows) == 4 and not skipped
    for r in rows:
        assert r["label"] in pred.classes and isinstance(r["boxes"], list)
        assert all(b["score"] >= pred.display_threshold and b["class"] in CLASSES for b in r["boxes"])
    e = pred.explain(next((neu_det / "images" / "patches").glob("*.jpg")))
    assert e.method == "boxes" and e.map.shape == (200, 200)
    assert e.overlay_png(next((neu_det / "images" / "patches").glob("*.jpg")))[:4] == b"\x89PNG"
    out = pred.export_onnx(tmp_path / "det.onnx")
    assert out.is_file()


def test_training_is_reproducible_from_the_seed(neu_det):
    """The same seed (and one thread) gives the same network, the new head's initialisation included."""
    import dataclasses

    import torch

    from vinspect.detect.annotations import load_annotations
    from vinspect.detect.train import DetectConfig, load_grid, preprocessing_for, train_detector

    data = load_annotations(neu_det / "images", neu_det / "voc")
    cfg = DetectConfig(input_size=64, epochs=1, val_fraction=0.0, batch_size=8)
    images, targets = load_grid(data, preprocessing_for(cfg, (64, 64)), progress=False)
    with _one_thread():
        nets = [train_detector(images, targets, len(data.classes),
                               dataclasses.replace(cfg, seed=s), progress=False)[0].state_dict()
                for s in (3, 3, 4)]
    assert all(torch.equal(nets[0][k], nets[1][k]) for k in nets[0])
    assert not all(torch.equal(nets[0][k], nets[2][k]) for k in nets[0])


def test_onnx_boxes_match_torch_on_20_images(tiny_model, neu_det, tmp_path):
    """Exported network + the shared decoding: IoU >= 0.99, same classes, scores within 1e-3."""
    import onnxruntime as ort

    from vinspect.models.predictor import load_predictor

    pred = load_predictor(tiny_model)
    paths = sorted((neu_det / "images").rglob("*.jpg"))[:20]
    pixels = np.stack([pred.decode(p) for p in paths])
    path = pred.export_onnx(tmp_path / "det.onnx")
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    raw = sess.run(None, {"images": pixels})
    thr = 0.1
    onnx_dets = pred.decode_outputs(raw, thr)
    torch_dets = pred.detect_pixels(pixels, thr)

    def iou(a, b):  # a box without area (clipped at the border) equals only itself
        w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
        h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
        union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - w * h
        return w * h / union if union > 0 else float(np.abs(a - b).max() < 1e-3)

    compared = 0
    for t, o in zip(torch_dets, onnx_dets):
        cut = thr + 2e-3 if len(t["scores"]) < 100 else float(t["scores"].min()) + 2e-3  # away from the cut-offs
        for side_a, side_b in ((t, o), (o, t)):
            for b, s, k in zip(side_a["boxes"], side_a["scores"], side_a["labels"]):
                if s < cut:
                    continue
                same = side_b["labels"] == k
                assert same.any()
                j = int(np.abs(side_b["boxes"][same] - b).max(axis=1).argmin())
                assert iou(b, side_b["boxes"][same][j]) >= 0.99
                assert abs(side_b["scores"][same][j] - s) <= 1e-3
                compared += 1
    assert compared >= 20


def test_service_lists_boxes_and_draws_them_as_the_heatmap(tiny_model, neu_det, tmp_path):
    pytest.importorskip("httpx")
    import httpx

    sys.path.insert(0, str(Path(__file__).parent))
    from serving_support import LiveServer

    from vinspect.serving.app import Service, create_app

    svc = Service(tiny_model, db=f"sqlite:///{tmp_path / 'log.sqlite3'}")
    img = next((neu_det / "images" / "scratches").glob("*.jpg")).read_bytes()
    with LiveServer(create_app(svc)) as srv, httpx.Client(base_url=srv.url, timeout=60) as c:
        r = c.post("/v1/inspect", content=img, headers={"content-type": "image/jpeg"})
        assert r.status_code == 200, r.text
        d = r.json()
        assert "boxes" in d["details"] and d["label"] in ["background", *CLASSES]
        h = c.get(d["heatmap_url"])
        assert h.status_code == 200 and h.content[:4] == b"\x89PNG"
        assert h.headers.get("x-heatmap-method") == "boxes"
    svc.close() if hasattr(svc, "close") else None


# ------------------------------------------------------------------------------------------------ CLI


def _cli(*args) -> int:
    from vinspect.cli import main

    return main([str(a) for a in args])


def test_cli_detect_predict_json_and_drawn_images(tiny_model, neu_det, tmp_path, capsys):
    assert _cli("detect", "predict", tiny_model, neu_det / "images" / "crazing", "--json", "--threshold", "0.05",
                "-q") == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 4 and all(r["width"] == 200 for r in rows)
    assert all(0 <= b["box"][0] <= b["box"][2] <= 200 for r in rows for b in r["boxes"])
    assert _cli("detect", "predict", tiny_model, neu_det / "images" / "crazing", "--out", tmp_path / "p", "-q") == 0
    assert len(list((tmp_path / "p").glob("*.png"))) == 4 and (tmp_path / "p" / "boxes.json").is_file()
    assert _cli("detect", "predict", tiny_model, neu_det / "images", "-q") == 2  # neither --json nor --out
    assert "give --json" in capsys.readouterr().err


def test_cli_detect_evaluate_writes_results_and_pictures(neu_det, tmp_path, capsys):
    out = tmp_path / "eval"
    assert _cli("detect", "evaluate", neu_det / "images", "--boxes", neu_det / "voc", "--splits", 1,
                "--input-size", 64, "--epochs", 1, "--out", out, "-q") == 0
    res = json.loads((out / "results.json").read_text())
    for k in ("map50_mean", "map50_95_mean", "ap50_per_class", "per_split", "images_per_second"):
        assert k in res
    assert set(res["ap50_per_class"]) == set(CLASSES) and len(res["per_split"]) == 1
    assert 0.0 <= res["map50_mean"] <= 1.0 and res["per_split"][0]["n_test"] >= 7
    assert (out / "pr_curves.png").stat().st_size > 1000 and (out / "predictions.png").stat().st_size > 1000
    assert "mAP@0.5" in capsys.readouterr().out


def test_cli_refuses_bad_boxes_in_one_line(neu_det, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert _cli("detect", "train", neu_det / "images", "--boxes", tmp_path / "empty", "--out", tmp_path / "m") == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "no .xml (Pascal VOC) or .txt (YOLO)" in err
