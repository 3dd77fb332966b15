"""Anomaly detection from normal images only: PatchCore and PaDiM on tiny real subsets of magnetic-tile,
the threshold chosen without labels, maps at the image's size, the bundle/predictor path, bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import SHARED, need

MT = SHARED / "magnetic-tile"
SMALL = {"size": (96, 96)}  # (height, width): small inputs keep every test in seconds


@pytest.fixture(scope="session")
def tiles(tmp_path_factory) -> Path:
    """A real subset: 34 defect-free tiles and 6 blowholes + 4 breaks, with their masks."""
    src = need(MT)
    dst = tmp_path_factory.mktemp("tiles")
    for cls, n in (("free", 34), ("blowhole", 6), ("break", 4)):
        (dst / "images" / cls).mkdir(parents=True)
        (dst / "masks" / cls).mkdir(parents=True)
        for p in sorted((src / "images" / cls).glob("*.jpg"))[:n]:
            shutil.copy(p, dst / "images" / cls / p.name)
            shutil.copy(src / "masks" / cls / (p.stem + ".png"), dst / "masks" / cls / (p.stem + ".png"))
    return dst


def _spec(h=96, w=96, resize="letterbox"):
    from vinspect.anomaly.features import InputSpec

    return InputSpec(w, h, resize, "bicubic", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


# ------------------------------------------------------------------------------------------------- algorithms


def test_greedy_coreset_is_the_textbook_greedy():
    """The lazy, vectorised selection picks exactly what the plain farthest-point loop picks."""
    from vinspect.anomaly.patchcore import _project, greedy_coreset

    g = torch.Generator().manual_seed(3)
    x = torch.randn(6000, 40, generator=g)
    x[:3000] *= 0.2  # a dense cluster and a sparse one
    got = greedy_coreset(x, 150, projection=16, seed=1, front_size=512).tolist()
    z = _project(x, 16, 1)
    sq = (z * z).sum(1)
    first = int(torch.randint(len(z), (1,), generator=torch.Generator().manual_seed(1)))
    want, d = [first], (sq - 2 * z @ z[first] + sq[first]).clamp_min(0)
    while len(want) < 150:
        j = int(d.argmax())
        want.append(j)
        d = torch.minimum(d, (sq - 2 * z @ z[j] + sq[j]).clamp_min(0))
    assert got == want


def test_pixel_metrics_match_sklearn():
    from sklearn.metrics import roc_auc_score

    from vinspect.anomaly.metrics import PixelAccumulator

    rng = np.random.default_rng(0)
    maps = [rng.normal(size=(30, 40)) for _ in range(4)]
    masks = [np.zeros((30, 40), bool) for _ in range(4)]
    masks[1][5:12, 5:15] = True
    masks[3][20:28, 30:38] = True
    for m, k in zip(maps, masks):
        m[k] += 1.5
    acc = PixelAccumulator(min(m.min() for m in maps), max(m.max() for m in maps))
    for m, k in zip(maps, masks):
        acc.add(m, k)
    want = roc_auc_score(np.concatenate([k.ravel() for k in masks]), np.concatenate([m.ravel() for m in maps]))
    assert acc.pixel_auroc() == pytest.approx(want, abs=1e-3)
    pro = acc.pro()
    assert 0.3 < pro < 1.0  # separable regions: well above chance (0.15 for a random map at FPR <= 0.3)


@pytest.mark.parametrize("method", ["patchcore", "padim"])
def test_each_method_separates_real_defects(tiles, method):
    """Fitted on 30 real defect-free tiles, scored on 4 held-out ones and 10 defective ones."""
    from vinspect.anomaly.features import decode_all
    from vinspect.anomaly.metrics import image_metrics
    from vinspect.anomaly.model import AnomalyModel

    free = sorted((tiles / "images" / "free").glob("*.jpg"))
    bad = sorted((tiles / "images" / "blowhole").glob("*.jpg")) + sorted((tiles / "images" / "break").glob("*.jpg"))
    m = AnomalyModel(method, spec=_spec(128, 128), params={"coreset_ratio": 0.1} if method == "patchcore" else {})
    dec = decode_all(free + bad, m.spec, progress=False)
    feats = m.features(dec.pixels)
    m.fit_features(feats[:30])
    maps, scores = m.score_features(feats[30:])
    assert maps.shape == (14, 128, 128) and maps.dtype == np.float32
    y = np.array([0] * 4 + [1] * 10)
    # tiny data, small input: well above chance, not a benchmark
    assert image_metrics(y, scores, None)["image_auroc"] >= 0.7
    if method == "patchcore":
        assert m.core.bank.dtype == torch.float16 and len(m.core.bank) == round(0.1 * 30 * feats.shape[2] * feats.shape[3])


def test_image_scores_come_from_the_same_patch_scores(tiles):
    """method (the default) = PatchCore's re-weighted worst patch (at most the worst patch's distance); topk = the
    mean of the highest patch scores; map_max = the blurred map's maximum: three readings of one fit, on real
    tiles."""
    from vinspect.anomaly.features import decode_all
    from vinspect.anomaly.maps import top_mean
    from vinspect.anomaly.model import AnomalyModel

    free = sorted((tiles / "images" / "free").glob("*.jpg"))
    bad = sorted((tiles / "images" / "break").glob("*.jpg"))
    m = AnomalyModel("patchcore", spec=_spec(96, 96), params={"coreset_ratio": 0.1})
    assert m.image_score == "method" and AnomalyModel("padim").image_score == "method"
    feats = m.features(decode_all(free[:20] + bad, m.spec, progress=False).pixels)
    m.fit_features(feats[:16])
    patch, _ = m.core.score(feats[16:])
    worst = patch.flatten(1).max(1).values.numpy()
    scores = {}
    for kind in ("topk", "method", "map_max"):
        m.image_score = kind
        maps, scores[kind] = m.score_features(feats[16:])
    k = round(0.02 * patch[0].numel())
    expect = np.sort(patch.flatten(1).numpy(), axis=1)[:, -k:].mean(1)
    np.testing.assert_allclose(scores["topk"], expect, rtol=1e-5)
    np.testing.assert_allclose(top_mean(patch, 1.0).numpy(), patch.flatten(1).mean(1).numpy(), rtol=1e-5)
    assert np.all(scores["topk"] <= worst + 1e-6) and np.all(scores["method"] <= worst + 1e-6)
    np.testing.assert_allclose(scores["map_max"], maps.reshape(len(maps), -1).max(1), rtol=1e-6)
    # the breaks score above the held-out free tiles with either score
    assert scores["method"][4:].mean() > scores["method"][:4].mean()
    assert scores["topk"][4:].mean() > scores["topk"][:4].mean()


def test_cli_image_score_options_reach_the_model_and_its_config():
    import argparse

    from vinspect.anomaly.model import AnomalyModel
    from vinspect.cli.anomaly import _common, _model_kwargs

    p = argparse.ArgumentParser()
    _common(p)
    kw = _model_kwargs(p.parse_args(["d", "--normal", "free", "--image-score", "topk", "--top-fraction", "0.05"]))
    m = AnomalyModel("patchcore", **kw)
    assert (m.image_score, m.top_fraction) == ("topk", 0.05)
    assert (m.config()["image_score"], m.config()["top_fraction"]) == ("topk", 0.05)
    assert AnomalyModel("patchcore", **_model_kwargs(p.parse_args(["d", "--normal", "free"]))).image_score == "method"
    for bad in (["--image-score", "mean"], ["--top-fraction", "0"]):
        with pytest.raises(SystemExit) as e:
            p.parse_args(["d", "--normal", "free", *bad])
        assert e.value.code == 2


def test_local_average_counts_the_zero_padding_like_patchcore(tiles):
    """border "zeros" (the default) = torch's AvgPool2d(3, 1, 1) on the layer maps, as PatchCore's Unfold and
    anomalib's pooler compute it; "valid" differs only on the border ring; a bundle config without the setting
    (saved before it existed) loads as "valid", the way it was fitted."""
    from torch import nn

    from vinspect.anomaly.features import decode_all
    from vinspect.anomaly.model import AnomalyModel

    paths = sorted((tiles / "images" / "free").glob("*.jpg"))[:2]
    m = AnomalyModel("patchcore", spec=_spec(96, 96))
    assert m.border == "zeros" and m.config()["border"] == "zeros"
    px = decode_all(paths, m.spec, progress=False).pixels
    zeros = m.features(px)
    valid = AnomalyModel("patchcore", spec=_spec(96, 96), border="valid").features(px)
    net = AnomalyModel("patchcore", spec=_spec(96, 96), local=1).net
    with torch.no_grad():
        x = torch.from_numpy(px).permute(0, 3, 1, 2).float()
        raw = net.body((x - net.mean) / net.std)
    pool = nn.AvgPool2d(3, 1, 1)
    a = pool(raw["f0"])
    b = nn.functional.interpolate(pool(raw["f1"]), size=a.shape[-2:], mode="bilinear", align_corners=False)
    zeros, valid = zeros.float(), valid.float()  # features are kept in float16
    torch.testing.assert_close(zeros, torch.cat([a, b], 1), rtol=2e-3, atol=1e-3)
    # the first layer's channels away from the border (the coarser layer's border spreads when upsampled)
    inner = (slice(None), slice(0, a.shape[1]), slice(1, -1), slice(1, -1))
    torch.testing.assert_close(zeros[inner], valid[inner], rtol=2e-3, atol=1e-3)
    assert (zeros[..., 0, :] - valid[..., 0, :]).abs().max() > 0.1
    cfg = {k: v for k, v in m.config().items() if k != "border"}
    old = AnomalyModel.from_state(cfg, m.spec, m.backbone, {"memory_bank": zeros[0, :, 0, :2].T.contiguous()})
    assert old.border == "valid"


def test_crossfit_scores_come_from_models_fitted_without_the_image(tiles):
    """Each training normal's threshold score comes from a model fitted on the other folds only; in-sample
    scores (the image's own patches in the bank) would be optimistic."""
    from vinspect.anomaly.features import decode_all
    from vinspect.anomaly.model import AnomalyModel
    from vinspect.anomaly.protocol import crossfit_scores

    free = sorted((tiles / "images" / "free").glob("*.jpg"))[:20]
    kw = dict(spec=_spec(64, 64), params={"coreset_ratio": 0.1})
    m = AnomalyModel("patchcore", **kw)
    feats = m.features(decode_all(free, m.spec, progress=False).pixels)
    oof = crossfit_scores(m, feats, folds=4, seed=0)
    order = np.random.default_rng(7919).permutation(20)
    held = np.sort(order[1::4])
    by_hand = AnomalyModel("patchcore", **kw).fit_features(feats[np.setdiff1d(np.arange(20), held)])
    np.testing.assert_allclose(oof[held], by_hand.score_features(feats[held])[1], rtol=1e-5)
    m.fit_features(feats)
    in_sample = m.score_features(feats)[1]
    assert np.median(in_sample) < np.median(oof)


def test_threshold_comes_from_held_out_normal_scores():
    from vinspect.anomaly.model import calibrated_threshold, quantile_threshold

    s = np.arange(100, dtype=float)
    assert quantile_threshold(s, 0.99) == pytest.approx(98.01)
    # with labels: the best-F1 cut between the classes
    t = calibrated_threshold([0, 0, 0, 1, 1], [0.1, 0.2, 0.3, 0.8, 0.9])
    assert 0.3 < t < 0.8


# ------------------------------------------------------------------------------------------------- evaluate


def test_evaluate_cli_writes_results_maps_and_plots(tiles, tmp_path):
    from vinspect.cli import main

    out = tmp_path / "ev"
    rc = main(["anomaly", "evaluate", str(tiles / "images"), "--normal", "free", "--splits", "2", "--image-size",
               "96", "--coreset", "0.1", "--masks", str(tiles / "masks"), "--out", str(out), "-q"])
    assert rc == 0
    r = json.loads((out / "results.json").read_text())
    for k in ("image_auroc_mean", "image_auroc_std", "image_ap_mean", "f1_at_threshold_mean", "pixel_auroc_mean",
              "pro_mean", "per_split", "fit_seconds", "images_per_second", "n_normal", "n_anomalous", "skipped"):
        assert k in r, k
    assert r["n_normal"] == 34 and r["n_anomalous"] == 10 and len(r["per_split"]) == 2
    assert r["pixel_auroc_mean"] > 0.6  # real defects, real masks: the maps point at them
    # the threshold was set from normal training images only: it is the same with the anomalous test set changed
    assert all(s["threshold"] is not None for s in r["per_split"])
    for f in ("roc.png", "scores.png", "worst.png", "results.txt"):
        assert (out / f).stat().st_size > 0


def test_threshold_does_not_depend_on_the_anomalous_images(tiles, tmp_path):
    from vinspect.anomaly.protocol import evaluate

    kw = dict(splits=1, progress=False, model_kwargs={"spec": _spec(), "params": {"coreset_ratio": 0.1}})
    a = evaluate(tiles / "images", "free", **kw)
    fewer = tmp_path / "fewer"
    shutil.copytree(tiles / "images", fewer)
    shutil.rmtree(fewer / "break")
    b = evaluate(fewer, "free", **kw)
    assert a["per_split"][0]["threshold"] == pytest.approx(b["per_split"][0]["threshold"], rel=1e-6)
    assert a["n_anomalous"] == 10 and b["n_anomalous"] == 6


# ------------------------------------------------------------------------------------------------- bad input


def _run(args):
    from vinspect.cli import main

    return main(args)


def test_bad_input_one_line_exit_2(tiles, tmp_path, capsys):
    img = str(tiles / "images")
    out = str(tmp_path / "o")
    base = ["anomaly", "evaluate", img, "--splits", "1", "--image-size", "64", "--out", out, "-q"]
    assert _run(base + ["--normal", "nosuch"]) == 2
    assert "no such class folder" in capsys.readouterr().err
    assert _run(base + ["--normal", "break"]) == 2  # 4 images < 10
    assert "at least 10" in capsys.readouterr().err
    assert _run(base + ["--normal", "free,blowhole,break"]) == 2
    assert "covers every class" in capsys.readouterr().err
    # a mask that matches no image is listed
    masks = tmp_path / "masks"
    shutil.copytree(tiles / "masks", masks)
    from PIL import Image

    Image.fromarray(np.zeros((8, 8), np.uint8)).save(masks / "free" / "not_an_image_stem.png")
    assert _run(base + ["--normal", "free", "--masks", str(masks)]) == 2
    err = capsys.readouterr().err
    assert "match no image" in err and "free/not_an_image_stem" in err and len(err.strip().splitlines()) == 1
    # a colour mask
    (masks / "free" / "not_an_image_stem.png").unlink()
    victim = next((masks / "blowhole").glob("*.png"))
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(victim)
    assert _run(base + ["--normal", "free", "--masks", str(masks)]) == 2
    assert "not single-channel" in capsys.readouterr().err


def test_corrupt_images_are_skipped_and_listed(tiles, tmp_path):
    from vinspect.anomaly.protocol import evaluate

    root = tmp_path / "imgs"
    shutil.copytree(tiles / "images", root)
    (root / "free" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (root / "blowhole" / "empty.png").write_bytes(b"")
    r = evaluate(root, "free", splits=1, progress=False,
                 model_kwargs={"spec": _spec(64, 64), "params": {"coreset_ratio": 0.1}})
    skipped = {s["path"] for s in r["skipped"]}
    assert {"free/broken.jpg", "blowhole/empty.png"} <= skipped
    assert r["n_normal"] == 34 and r["n_anomalous"] == 10
