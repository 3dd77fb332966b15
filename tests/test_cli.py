"""The command line end to end on small real and generated data: outputs, exit codes, bad input."""

import hashlib
import json
import subprocess
import sys

import pytest

from conftest import add_bad_files
from vinspect.cli import main

FAST = ["--image-size", "64", "-q"]


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_evaluate_writes_results_with_every_key(capsys, neu_small, tmp_path):
    code, out, err = run(capsys, "evaluate", neu_small, "--splits", 3, "--out", tmp_path / "r", *FAST)
    assert code == 0, err
    res = json.loads((tmp_path / "r" / "results.json").read_text())
    for key in ("accuracy_mean", "accuracy_std", "balanced_accuracy_mean", "per_split", "classes",
                "confusion_matrix", "per_class", "n_images", "skipped", "backbone", "layer", "head", "feature_dim",
                "extract_images_per_second", "cache_hits"):
        assert key in res, key
    assert res["classes"] == ["crazing", "patches", "scratches"] and res["n_images"] == 30
    assert len(res["per_split"]) == 3 and sum(map(sum, res["confusion_matrix"])) == 3 * 9
    assert res["accuracy_mean"] > 0.8  # three very different NEU defects, even at 64 px
    assert (tmp_path / "r" / "results.txt").read_text().startswith("vinspect evaluate")
    assert (tmp_path / "r" / "confusion_matrix.png").stat().st_size > 1000
    assert "accuracy" in out
    code, out, _ = run(capsys, "evaluate", neu_small, "--splits", 3, "--out", tmp_path / "r2", *FAST)
    again = json.loads((tmp_path / "r2" / "results.json").read_text())
    assert again["cache_hits"] == 30 and again["n_computed"] == 0
    assert again["accuracy_mean"] == res["accuracy_mean"]


def test_bad_files_are_skipped_and_listed(capsys, generated, tmp_path):
    bad = add_bad_files(generated, "spots")
    code, out, err = run(capsys, "evaluate", generated, "--splits", 2, "--out", tmp_path / "r", *FAST)
    assert code == 0, err
    res = json.loads((tmp_path / "r" / "results.json").read_text())
    assert sorted(s["path"] for s in res["skipped"]) == sorted(bad)
    assert res["n_images"] == 24
    for b in bad:
        assert b in err


@pytest.mark.parametrize("argv,message", [
    (["evaluate", "/no/such/dir"], "/no/such/dir: no such directory"),
    (["evaluate", "{data}", "--backbone", "nope_net"], "unknown backbone 'nope_net'"),
    (["evaluate", "{data}", "--layer", "nope"], "unknown layer 'nope'"),
    (["evaluate", "{data}", "--backbone", "resnet18"], "no weights for 'resnet18'"),
    (["evaluate", "{data}", "--weights", "/no/file.pth", "--backbone", "resnet18"], "no such file"),
    (["evaluate", "{data}", "--splits", "0"], "--splits 0"),
    (["evaluate", "{data}", "--kfold", "20"], "20-fold"),
    (["evaluate", "{data}", "--classes", "x=nope"], "does not have"),
    (["evaluate", "{data}", "--classes", "spots"], "found 1 class"),
    (["evaluate", "{data}", "--head", "tree"], "invalid choice"),
    (["predict", "/no/model", "x.png"], "not a vinspect model directory"),
    (["train", "{data}"], "missing --out"),
])
def test_refusals_are_one_line_with_exit_2(capfd, generated, argv, message):
    argv = [a.replace("{data}", str(generated)) for a in argv] + (FAST if argv[0] != "predict" else ["-q"])
    code = main(argv)
    out, err = capfd.readouterr()
    assert code == 2
    assert message in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_class_too_small_for_the_splits_is_refused_before_work(capsys, generated, tmp_path):
    for p in sorted((generated / "spots").glob("*.png"))[3:]:
        p.unlink()
    code, _, err = run(capsys, "evaluate", generated, "--out", tmp_path / "r", *FAST)
    assert code == 2 and "spots (3)" in err
    assert not (tmp_path / "r").exists()


def test_console_script_exit_codes_without_traceback(tmp_path):
    exe = [sys.executable, "-m", "vinspect"]
    r = subprocess.run(exe + ["evaluate", "/no/such/dir"], capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.strip() == "vinspect: error: /no/such/dir: no such directory"
    r = subprocess.run(exe + ["frobnicate"], capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    r = subprocess.run(exe + ["backbones"], capture_output=True, text=True)
    assert r.returncode == 0 and "efficientnet_lite0" in r.stdout and "mobilenet_v2" in r.stdout


def test_config_file_with_command_line_override(capsys, generated, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"data: {generated}\nsplits: 2\nhead: knn\nimage-size: 64\nout: {tmp_path / 'r'}\n")
    code, _, err = run(capsys, "evaluate", "--config", cfg, "--head", "logreg", "-q")
    assert code == 0, err
    res = json.loads((tmp_path / "r" / "results.json").read_text())
    assert res["head"] == "logreg" and res["splits"] == 2 and res["image_size"] == 64
    cfg.write_text("splits: 2\nbogus_option: 1\n")
    code, _, err = run(capsys, "evaluate", generated, "--config", cfg)
    assert code == 2 and "unknown option 'bogus_option'" in err
    cfg.write_text("splits: [unclosed\n")
    code, _, err = run(capsys, "evaluate", generated, "--config", cfg)
    assert code == 2 and "not valid YAML" in err


def test_train_then_predict_json_and_csv(capsys, neu_small, tmp_path):
    model = tmp_path / "model"
    code, out, err = run(capsys, "train", neu_small, "--out", model, "--eval-splits", 2, *FAST)
    assert code == 0, err
    meta = json.loads((model / "model.json").read_text())
    assert meta["classes"] == ["crazing", "patches", "scratches"]
    assert meta["format_version"] == 2 and meta["task"] == "classify" and meta["kind"] == "head"
    assert meta["preprocessing"]["width"] == meta["preprocessing"]["height"] == 64
    assert len(meta["backbone"]["weights_sha256"]) == 64
    assert "accuracy_mean" in meta["metrics"] and meta["versions"]["torch"]
    assert (model / "head.skops").is_file() and not list(model.glob("*.pkl"))
    assert meta["files"]["head.skops"] == hashlib.sha256((model / "head.skops").read_bytes()).hexdigest()
    code, out, err = run(capsys, "predict", model, neu_small / "scratches", "--json", "--csv",
                         tmp_path / "p.csv", "-q")
    assert code == 0, err
    rows = json.loads(out)
    assert len(rows) == 10
    for r in rows:
        assert r["label"] == "scratches"  # the training images themselves
        assert sum(r["probabilities"].values()) == pytest.approx(1.0, abs=1e-6)
    lines = (tmp_path / "p.csv").read_text().splitlines()
    assert lines[0] == "path,label,p_crazing,p_patches,p_scratches" and len(lines) == 11
    code, out, err = run(capsys, "predict", model, neu_small / "crazing" / "crazing_1.jpg", "-q")
    assert code == 0 and "crazing" in out.splitlines()[1]


def test_predict_lists_undecodable_files(capsys, generated, tmp_path):
    model = tmp_path / "m"
    assert run(capsys, "train", generated, "--out", model, "--eval-splits", 0, *FAST)[0] == 0
    bad = add_bad_files(generated, "spots")
    code, out, err = run(capsys, "predict", model, generated / "spots", "--json", "-q")
    assert code == 0
    assert len(json.loads(out)) == 12
    for b in bad:
        assert b.split("/")[-1] in err


def test_compare_writes_table_json_and_plot(capsys, neu_small, tmp_path):
    code, out, err = run(capsys, "compare", neu_small, "--backbones", "efficientnet_lite0,mobilenet_v2",
                         "--splits", 2, "--out", tmp_path / "cmp", "-q")
    assert code == 0, err
    summary = json.loads((tmp_path / "cmp" / "comparison.json").read_text())
    assert [r["backbone"] for r in summary["rows"]] == ["efficientnet_lite0", "mobilenet_v2"]
    for r in summary["rows"]:
        assert r["images_per_second"] > 0 and r["feature_dim"] > 0 and 0 <= r["accuracy_mean"] <= 1
    assert (tmp_path / "cmp" / "comparison.png").stat().st_size > 5000
    assert "mobilenet_v2" in (tmp_path / "cmp" / "comparison.txt").read_text()
    assert (tmp_path / "cmp" / "mobilenet_v2" / "results.json").is_file()


def test_layers_and_backbones_commands(capsys):
    code, out, _ = run(capsys, "layers", "efficientnet_lite0", "--json")
    layers = {r["layer"]: r for r in json.loads(out)}
    assert layers["blocks.6"]["shape"] == [320, 7, 7] and layers["blocks.6"]["default"]
    code, out, _ = run(capsys, "backbones", "--json")
    assert {r["name"] for r in json.loads(out)} >= {"efficientnet_lite0", "efficientnet_lite1",
                                                    "efficientnet_lite2", "mobilenet_v2"}


def test_random_init_only_when_asked(capsys, generated, tmp_path):
    code, _, err = run(capsys, "evaluate", generated, "--backbone", "resnet18", "--random-init", "--splits", 2,
                       "--out", tmp_path / "r", "--layer", "layer3", *FAST)
    assert code == 0, err
    res = json.loads((tmp_path / "r" / "results.json").read_text())
    assert res["weights_sha256"] is None and res["feature_dim"] == 256


def test_classify_group_and_the_top_level_aliases_agree(capsys, generated, tmp_path):
    """`vinspect classify evaluate` is `vinspect evaluate` (same results), and --config reaches the nested command."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text("splits: 2\nhead: knn\n")
    a, b = tmp_path / "a", tmp_path / "b"
    assert run(capsys, "evaluate", generated, "--config", cfg, "--out", a, *FAST)[0] == 0
    assert run(capsys, "classify", "evaluate", generated, "--config", cfg, "--out", b, *FAST)[0] == 0
    ra, rb = (json.loads((d / "results.json").read_text()) for d in (a, b))
    assert ra["splits"] == rb["splits"] == 2 and ra["head"] == rb["head"] == "knn"
    assert ra["per_split"] == rb["per_split"] and ra["accuracy_mean"] == rb["accuracy_mean"]
    code, _, err = run(capsys, "classify", "train", generated, *FAST)
    assert code == 2 and "classify train: missing --out" in err
    bad = tmp_path / "bad.yaml"
    bad.write_text("nonsense: 1\n")
    code, _, err = run(capsys, "classify", "evaluate", generated, "--config", bad, *FAST)
    assert code == 2 and "unknown option 'nonsense' for 'classify evaluate'" in err
    assert run(capsys, "classify")[0] == 2
