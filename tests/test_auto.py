"""Automatic model selection (--auto) on tiny real subsets: honest (the outer test part never reaches the inner
search), reproducible from the seed, its bundle predicts, bad input refused in one line."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from conftest import NEU, WEAR, need
from vinspect.cli import main
from vinspect.data.dataset import scan_folder
from vinspect.features.extract import Extractor, extract
from vinspect.pipeline.auto import prepare
from vinspect.selection import nested, space
from vinspect.selection.search import DEFAULT_SELECT, Clock


def run(capfd, *argv):
    code = main([str(a) for a in argv])
    out, err = capfd.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def wear_small(tmp_path_factory):
    """Real insert-wear crops (about 320x130, so letterbox variants exist): low and high, 5 each."""
    src = need(WEAR)
    dst = tmp_path_factory.mktemp("wear_small")
    for cls in ("low", "high"):
        (dst / cls).mkdir()
        for p in sorted((src / cls).glob("*.png"))[:5]:
            shutil.copy(p, dst / cls / p.name)
    return dst


@pytest.fixture(scope="module")
def neu_loaded(neu_small):
    ds = scan_folder(neu_small)
    return ds, prepare(ds, progress=False)


@pytest.fixture(scope="module")
def strips_small(tmp_path_factory):
    """Generated from real NEU images: 8 strips of 2 x 6 rolled-in-scale cells and 8 with one cell of another
    defect class (400 x 1200 px: much larger than the input, so the search adds tiles)."""
    from vinspect.data.strips import make_strips

    return make_strips(need(NEU), tmp_path_factory.mktemp("strips"), per_class=8)


SMALL_HEADS = [space.HeadConfig("logreg", C=1.0), space.HeadConfig("logreg", C=0.1),
               space.HeadConfig("svm-rbf", C=10.0, gamma_scale=1.0), space.HeadConfig("knn", n_neighbors=1)]


def test_space_default_first_and_cli_default_matches():
    v = space.feature_variants("blocks.6", space.resolutions([(320, 130)] * 3, 224))
    assert v[0] == space.FeatureVariant("blocks.6", "avg", 224, "squash")
    assert {x.layer for x in v} == {"blocks.6", "blocks.5", "blocks.4", "blocks.5+blocks.6",
                                    "blocks.4+blocks.5+blocks.6"}
    assert {(x.size, x.resize) for x in v} == {(224, "squash"), (224, "letterbox"), (320, "letterbox")}
    assert not any(x.grid for x in v)  # 320 px: not much larger than the input, no tiles
    assert space.resolutions([(200, 200)] * 3, 224) == [(224, "squash", None)]  # NEU: nothing larger, square
    big = space.resolutions([(2000, 1000)], 224)
    assert big[-2] == (448, "letterbox", None)  # the native letterbox is capped ...
    assert big[-1][:2] == (224, "tiles")  # ... so tiles keep the native scale, at most 16 of them
    assert 2 <= big[-1][2][0] * big[-1][2][1] <= space.MAX_SEARCH_TILES and big[-1][2][1] > big[-1][2][0]
    assert space.tile_grid([(1250, 500)] * 3, 224) == (2, 6)  # a long strip: 12 tiles of 224 px
    assert space.tile_grid([(448, 448)], 224) is None  # up to two input sides: no tiles
    tiled = space.feature_variants("blocks.6", space.resolutions([(1250, 500)], 224))
    t = [x for x in tiled if x.grid]
    assert len(t) == 5 * 4 * 2 and {x.tiles for x in t} == {"max", "mean"}  # layers x pools x reduce
    assert t[0].name == "blocks.6/avg/224-tiles2x6-max"
    assert space.FeatureVariant(**json.loads(json.dumps(t[0].as_dict()))) == t[0]  # read back from results.json
    assert space.head_grid()[0] == space.REFERENCE_HEAD
    from vinspect.cli import classify

    assert classify.DEFAULT_SELECT == DEFAULT_SELECT
    assert nested.parse_budget("10m") == 600 and nested.parse_budget("1h30m") == 5400
    assert nested.parse_budget("90s") == 90 and nested.parse_budget(45) == 45


def test_variant_features_equal_the_plain_extractor(wear_small, tmp_path):
    """Every variant is cut from one pass per resolution; a bundle later extracts it with the plain Extractor:
    both must give the same features (fp32 engines agree to about 1e-5)."""
    ds = scan_folder(wear_small)
    loaded = prepare(ds, cache_dir=tmp_path / "a", engine="torch", progress=False)  # torch: no export (fast)
    assert len(loaded["variants"]) == 60 and len(loaded["stats"]["passes"]) == 3
    native = loaded["variants"][-1].size
    assert native > 224
    for v in (space.FeatureVariant("blocks.5+blocks.6", "avgmax", 224, "letterbox"),
              space.FeatureVariant("blocks.4", "gem", native, "letterbox"),
              space.FeatureVariant("blocks.6", "max", 224, "squash")):
        fs = extract(ds, Extractor(layer=v.layer, pool=v.pool, image_size=v.size, resize=v.resize, engine="torch"),
                     cache_dir=tmp_path / "b", use_cache=False, progress=False)
        a = loaded["features"][v]
        assert a.shape == fs.features.shape
        assert np.abs(a - fs.features).max() <= 1e-4 * np.abs(fs.features).max() + 1e-5, v.name
    again = prepare(ds, cache_dir=tmp_path / "a", engine="onnx", progress=False)  # all from the cache now
    assert again["stats"]["n_computed"] == 0
    # a later plain run served wholly from that cache still reports the extraction rate (vinspect compare did not)
    cached = extract(ds, Extractor(layer="blocks.6", pool="max", image_size=224, resize="squash", engine="torch"),
                     cache_dir=tmp_path / "a", progress=False)
    assert cached.stats["n_computed"] == 0 and cached.stats["images_per_second_source"] == "cache"
    assert cached.stats["images_per_second"] > 0


def test_outer_test_part_never_reaches_the_search(neu_loaded):
    """The outer test images are mislabelled on purpose.  The inner search only sees the training part, so its
    scores stay high while the outer score (against the wrong labels) collapses; a search that saw the test
    rows would score them wrong too (the control below shows the drop is detectable)."""
    ds, loaded = neu_loaded
    y = loaded["labels"]
    folds = nested.outer_folds(y, 1, 0.3, seed=0)
    tr, te = folds[0]
    poisoned = y.copy()
    poisoned[te] = (y[te] + 1) % 3
    seen = []
    variants = loaded["variants"][:4]
    res = nested.nested_evaluate(loaded["features"], poisoned, ds.classes, variants, SMALL_HEADS, folds=folds,
                                 budget_s=300, progress=False, on_inner=lambda i, rows: seen.append(rows))
    assert len(seen) == 1 and set(seen[0]) == set(tr) and not set(seen[0]) & set(te)
    assert _inner_best(res) >= 0.95
    assert res["accuracy_mean"] <= 0.15  # the model learnt the true classes: the flipped test labels are missed
    # control: a leaky protocol (the test rows inside the training part) is caught by the same numbers
    leaky = [(np.arange(len(y)), te)]
    bad = nested.nested_evaluate(loaded["features"], poisoned, ds.classes, variants, SMALL_HEADS, folds=leaky,
                                 budget_s=300, progress=False)
    assert _inner_best(bad) < 0.9


def test_search_order_reference_in_full_and_repeats_on_small_data(neu_loaded):
    """The default configuration is scored on every inner fold before anything else (so it is in the final
    comparison even when the budget stops the search right after it); heads are searched on the default
    features before the other feature variants; small training parts get repeated inner folds."""
    import importlib

    S = importlib.import_module("vinspect.selection.search")  # the package exports the function of that name
    ds, loaded = neu_loaded
    y, X, variants = loaded["labels"], loaded["features"], loaded["variants"][:5]
    assert S.inner_repeats(141) == 4 and S.inner_repeats(50) == S.MAX_REPEATS and S.inner_repeats(S.MIN_VALIDATION) == 1
    assert len(S.inner_folds(y, 0)) == 5 * S.inner_repeats(len(y))
    full = S.search(X, y, variants, SMALL_HEADS, seed=1, n_jobs=1)
    k = full.folds
    recs = full.records
    assert recs[0]["label"] == S.Candidate(variants[0], S.REFERENCE_HEAD).label and recs[0]["n_folds"] == k
    stages = [r["stage"] for r in recs]
    assert stages == sorted(stages) and stages[0] == 0 and set(stages[1:]) <= {1, 2, 3}
    assert all(r["features"] == variants[0].as_dict() for r in recs if r["stage"] == 1)
    # stage 2: every variant with the best head of each of the best head families (here all three families)
    for v in variants:
        families = {r["head"]["name"] for r in recs if r["features"] == v.as_dict() and r["stage"] <= 2}
        assert families == {"logreg", "svm-rbf", "knn"}, v.name
    # small stages are scored on every fold; large ones halve from a fifth of the folds
    assert S.stage_rungs(10, 5) == [5] and S.stage_rungs(S.MAX_FULL_FITS, 20) == [4, 12, 20]
    assert S.rungs(5) == [1, 3, 5]
    # the choice on 30 images (repeated folds): the one-SE rule, the first in the search's order within one SE
    key = "mean_" + DEFAULT_SELECT
    scored = [r for r in recs if r["n_folds"] == k]
    top = max(scored, key=lambda r: r[key])
    chosen = next(r for r in scored if r["label"] == full.best.label)
    vals = [f[DEFAULT_SELECT] for f in top["folds"].values()]
    se = np.std(vals, ddof=1) / np.sqrt(5)
    assert chosen[key] >= top[key] - se - 1e-12
    assert all(r[key] < top[key] - se for r in scored[:scored.index(chosen)])
    # a budget that runs out right after the reference: it is chosen, nothing else was scored
    cut = S.search(X, y, variants, SMALL_HEADS, seed=1, n_jobs=1, clock=_StopAfterReference())
    assert cut.budget_reached and cut.best == S.Candidate(variants[0], S.REFERENCE_HEAD)
    assert [r["n_folds"] for r in cut.records] == [k]


def test_large_training_parts_take_the_best_mean(neu_loaded, monkeypatch):
    """From MIN_VALIDATION training images on (one 5-fold pass) the choice is the best mean inner score (the
    threshold lowered here so that 30 real images count as large)."""
    import importlib

    S = importlib.import_module("vinspect.selection.search")
    ds, loaded = neu_loaded
    monkeypatch.setattr(S, "MIN_VALIDATION", 10)
    res = S.search(loaded["features"], loaded["labels"], loaded["variants"][:5], SMALL_HEADS, seed=2, n_jobs=1)
    assert res.folds == 5
    scored = [r for r in res.records if r["n_folds"] == 5]
    best = max(scored, key=lambda r: (r["mean_" + DEFAULT_SELECT], -scored.index(r)))
    assert res.best.label == best["label"]


def test_a_budget_cut_stage_still_offers_its_leader(strips_small, monkeypatch):
    """The budget runs out in the middle of stage 2's halving: the candidate ahead on the folds that every
    survivor has (here the first rung's) is then scored on its remaining folds and takes part in the choice,
    instead of being thrown away with the stage."""
    import importlib

    S = importlib.import_module("vinspect.selection.search")
    loaded = prepare(scan_folder(strips_small), progress=False)  # NEU is too easy: the default would lead
    monkeypatch.setattr(S, "MAX_FULL_FITS", 0)  # stage 2 halves (rungs of 5, 15 and 25 of the 25 folds)
    res = S.search(loaded["features"], loaded["labels"], loaded["variants"], SMALL_HEADS, seed=1, n_jobs=1,
                   clock=_StopAfterChecks(60))  # stage 1 takes 25 checks; the cut comes early in stage 2
    k = res.folds
    assert res.budget_reached and res.finished_after_budget
    rec = {r["label"]: r for r in res.records}
    fin = rec[res.finished_after_budget]
    assert fin["n_folds"] == k and fin["stage"] == 2
    stage2_heads = {r["head"]["name"] for r in res.records if r["stage"] == 2}
    rung1 = [r for r in res.records if r["head"]["name"] in stage2_heads and r["n_folds"] >= 5]
    assert any(5 <= r["n_folds"] < k for r in rung1)  # the cut left others part-scored

    def first5(r):
        return np.mean([r["folds"][str(f)][DEFAULT_SELECT] for f in range(5)])

    assert first5(fin) >= max(first5(r) for r in rung1) - 1e-12
    assert sum(r["n_folds"] == k for r in res.records if r["stage"] == 2) >= 1


class _StopAfterChecks(Clock):
    """A budget that runs out after ``n`` checks (one per batch of fits): deterministic, unlike wall time."""

    def __init__(self, n: int):
        super().__init__(1e9)
        self.n, self.calls = n, 0

    def expired(self) -> bool:
        self.calls += 1
        self.reached = self.reached or self.calls > self.n
        return self.reached


class _StopAfterReference(Clock):
    """A budget that runs out right after the reference's fits: the first check (made once the reference is
    scored) passes, every later one fails (deterministic, unlike wall time)."""

    def __init__(self):
        super().__init__(1e9)
        self.calls = 0

    def expired(self) -> bool:
        self.calls += 1
        self.reached = self.reached or self.calls > 1
        return self.reached


def _inner_best(res) -> float:
    cands = res["outer"][0]["candidates"]
    most = max(r["n_folds"] for r in cands)
    return max(r["mean_balanced_accuracy"] for r in cands if r["n_folds"] == most)


def _strip(res):
    return [{"chosen": d["chosen"]["label"], "acc": d["accuracy"],
             "inner": [(r["label"], r["folds"]) for r in d["candidates"]]} for d in res["outer"]]


def test_reproducible_from_the_seed(neu_loaded):
    ds, loaded = neu_loaded
    kw = dict(splits=2, budget_s=600, progress=False)
    a = nested.nested_evaluate(loaded["features"], loaded["labels"], ds.classes, loaded["variants"][:6],
                               SMALL_HEADS, seed=3, **kw)
    b = nested.nested_evaluate(loaded["features"], loaded["labels"], ds.classes, loaded["variants"][:6],
                               SMALL_HEADS, seed=3, **kw)
    assert not a["budget_reached_splits"] and _strip(a) == _strip(b)


def test_evaluate_auto_reports_every_candidate(capfd, neu_small, tmp_path):
    code, out, err = run(capfd, "classify", "evaluate", neu_small, "--auto", "--splits", 2, "--budget", "40s",
                         "--out", tmp_path / "r", "-q")
    assert code == 0, err
    res = json.loads((tmp_path / "r" / "results.json").read_text())
    assert res["method"] == "head-auto" and res["select"] == "balanced_accuracy" and res["splits"] == 2
    for key in ("accuracy_mean", "accuracy_std", "balanced_accuracy_mean", "balanced_accuracy_std", "per_class",
                "chosen_counts", "search_space", "outer", "budget_seconds"):
        assert key in res, key
    assert all(0 <= m["recall"] <= 1 for m in res["per_class"].values())
    for d in res["outer"]:
        labels = [r["label"] for r in d["candidates"]]
        assert labels[0] == "blocks.6/avg/224-squash + logreg C=1"  # the default is scored first
        assert len(labels) == len(set(labels)) >= 20 and d["chosen"]["label"] in labels
    assert res["accuracy_mean"] > 0.8
    txt = (tmp_path / "r" / "results.txt").read_text()
    assert txt.startswith("vinspect evaluate --auto") and "outer split 1: chose" in txt
    assert "auto: accuracy" in out and "auto search" not in err  # -q: no progress bar


def test_train_auto_bundle_predicts(capfd, neu_small, tmp_path):
    code, out, err = run(capfd, "train", neu_small, "--auto", "--budget", "20s", "--out", tmp_path / "m", "-q")
    assert code == 0, err
    m = json.loads((tmp_path / "m" / "model.json").read_text())
    sel = m["metrics"]["selection"]
    assert m["kind"] == "head" and sel["chosen"]["label"].startswith(m["backbone"]["layer"] + "/")
    assert m["backbone"]["pool"] == sel["chosen"]["features"]["pool"]
    assert m["training"]["selection"]["candidates"] and m["config"]["head"]["name"] == sel["chosen"]["head"]["name"]
    code, out, err = run(capfd, "predict", tmp_path / "m", neu_small / "scratches", "--json", "-q")
    assert code == 0, err
    rows = json.loads(out)
    assert len(rows) == 10 and sum(r["label"] == "scratches" for r in rows) >= 9


def test_bad_input_one_line_exit_2(capfd, neu_small, tmp_path):
    for argv, msg in ((["--budget", "soon"], "--budget 'soon'"),
                      (["--budget", "1s"], "too small"),  # 0.5 s per outer split
                      (["--pool", "max"], "--auto chooses the configuration itself: drop --pool")):
        code, _, err = run(capfd, "evaluate", neu_small, "--auto", "--splits", 2, "--out", tmp_path / "r", "-q",
                           *argv)
        assert code == 2 and msg in err, err
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_class_too_small_for_nested_selection(capfd, neu_small, tmp_path):
    data = tmp_path / "d"
    shutil.copytree(neu_small, data)
    for p in sorted((data / "patches").glob("*.jpg"))[1:]:
        p.unlink()  # one image of patches: no inner fold can hold it in both parts
    code, _, err = run(capfd, "train", data, "--auto", "--out", tmp_path / "m", "-q")
    assert code == 2 and "nested selection needs at least 2 images of every class" in err, err
    assert len(err.strip().splitlines()) == 1


def test_tiles_are_searched_and_equal_the_plain_extractor(strips_small, tmp_path):
    """The tiled variants come out of one pass (max and mean over the tiles); each equals the plain Extractor
    with the same tiles, which equals every tile cut by hand through the untiled network."""
    ds = scan_folder(strips_small)
    loaded = prepare(ds, cache_dir=tmp_path / "a", engine="torch", progress=False)
    tiled = [v for v in loaded["variants"] if v.grid]
    assert tiled and {v.grid for v in tiled} == {(2, 5)}  # 400 x 1200 px at 224 px: 2 x 5.4 tiles
    assert [p.get("grid") for p in loaded["stats"]["passes"]].count([2, 5]) == 1
    assert "max over tiles" in " ".join(loaded["space"]["tiles"])
    for v in (space.FeatureVariant("blocks.6", "avg", 224, "tiles", (2, 5), "max"),
              space.FeatureVariant("blocks.5+blocks.6", "avgmax", 224, "tiles", (2, 5), "mean")):
        ex = Extractor(engine="torch", **v.extractor_kwargs())
        fs = extract(ds, ex, cache_dir=tmp_path / "b", use_cache=False, progress=False)
        a = loaded["features"][v]
        assert a.shape == fs.features.shape
        assert np.abs(a - fs.features).max() <= 1e-4 * np.abs(fs.features).max() + 1e-5, v.name
    ex = Extractor(layer="blocks.6", pool="avg", engine="torch", tiles=(2, 5, "max"))
    canvas = np.stack([ex.decode(p) for p in ds.paths[:2]])
    assert canvas.shape == (2, 448, 1120, 3)
    cut = canvas.reshape(2, 2, 224, 5, 224, 3).transpose(0, 1, 3, 2, 4, 5).reshape(-1, 224, 224, 3)
    by_hand = Extractor(layer="blocks.6", pool="avg", engine="torch").features(cut).reshape(2, 10, -1).max(1)
    assert np.allclose(ex.features(canvas), by_hand, atol=1e-4)


def test_tiled_bundle_predicts_and_exports(strips_small, tmp_path):
    """A head on max-over-tiles features saved as a normal bundle: the predictor decodes the canvas and tiles it,
    giving the head's own probabilities; the ONNX export (tiles inside the graph) gives them too."""
    from vinspect.models.head import save_head_bundle
    from vinspect.models.predictor import load_predictor

    ds = scan_folder(strips_small)
    ex = Extractor(layer="blocks.6", pool="avg", engine="torch", tiles=(2, 5, "max"))
    fs = extract(ds, ex, cache_dir=tmp_path / "c", progress=False)
    h = space.REFERENCE_HEAD
    head = h.make(fs.features.shape[1]).fit(fs.features, fs.labels)
    save_head_bundle(tmp_path / "m", head, ex, h.bundle_config(fs.features.shape[1]), fs.features.shape[1], {},
                     {"classes": ds.classes})
    m = json.loads((tmp_path / "m" / "model.json").read_text())
    assert m["backbone"]["tiles"] == [2, 5, "max"]
    assert (m["preprocessing"]["width"], m["preprocessing"]["height"]) == (1120, 448)
    pred = load_predictor(tmp_path / "m", engine="torch")
    rows, skipped = pred.predict([strips_small], progress=False)
    assert not skipped and len(rows) == len(ds)
    want = head.predict_proba(fs.features)
    got = {r["path"]: r["probabilities"] for r in rows}
    for i, rel in enumerate(fs.relpaths):
        p = next(v for k, v in got.items() if k.endswith(rel))
        assert np.allclose([p[c] for c in ds.classes], want[i], atol=1e-4)
    import onnxruntime as ort

    onnx_file = pred.export_onnx(tmp_path / "m.onnx")
    sess = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    canvas = np.stack([pred.decode(p) for p in ds.paths[:3]])
    _, proba = sess.run(None, {"images": canvas})
    assert np.allclose(proba, head.predict_proba(ex.features(canvas)), atol=1e-4)
    # the inspection service takes the same bundle: one strip posted, the head's own probabilities back
    import httpx
    from serving_support import LiveServer
    from vinspect.serving.app import Service, create_app

    svc = Service(tmp_path / "m", db=f"sqlite:///{tmp_path / 'log.sqlite3'}", engine="torch")
    path = ds.paths[0]
    with LiveServer(create_app(svc)) as srv, httpx.Client(base_url=srv.url, timeout=60) as c:
        r = c.post("/v1/inspect", content=path.read_bytes(), headers={"Content-Type": "image/jpeg"})
        assert r.status_code == 200, r.text
        p = r.json()["probabilities"]
    i = fs.relpaths.index(path.relative_to(strips_small).as_posix())
    assert np.allclose([p[c] for c in ds.classes], want[i], atol=1e-4)


def test_auto_finetune_not_tried_when_the_budget_is_short(capfd, neu_small, tmp_path):
    """--auto finetune with a budget far below a fine-tuning's estimated cost: the feature search runs with the
    whole budget and the report says why fine-tuning was not tried."""
    code, out, err = run(capfd, "evaluate", neu_small, "--auto", "finetune", "--splits", 2, "--budget", "10s",
                         "--out", tmp_path / "r", "-q")
    assert code == 0, err
    res = json.loads((tmp_path / "r" / "results.json").read_text())
    assert res["auto"] == "finetune"
    for d in res["outer"]:
        ft = d["finetune"]
        assert not ft["tried"] and "not tried" in ft["reason"] and ft["inner_fit_seconds"] > 0
        assert ft["search_budget_seconds"] == pytest.approx(5.0)  # the whole share of the split
        assert d["chosen"]["label"].startswith("blocks.")
    assert "fine-tuning: tried in 0 of 2 splits" in out
    assert "fine-tuning: not tried" in (tmp_path / "r" / "results.txt").read_text()


def test_train_auto_finetune_tried_and_its_bundle(capfd, neu_small, tmp_path, monkeypatch):
    """With a budget that allows it, fine-tuning is scored on inner folds against the search's choice on the same
    folds (recorded in the bundle).  When it wins (forced below: the features are perfect on this subset, so it
    cannot win here), train --auto finetune writes a fine-tuned cnn bundle that predicts."""
    code, out, err = run(capfd, "train", neu_small, "--auto", "finetune", "--budget", "2h", "--out",
                         tmp_path / "m", "-q")
    assert code == 0, err
    m = json.loads((tmp_path / "m" / "model.json").read_text())
    ft = m["metrics"]["selection"]["finetune"]
    assert ft["tried"] and 2 <= len(ft["folds"]) <= 5  # a small training part: two folds at least, one pass at most
    key = "mean_" + DEFAULT_SELECT
    assert ft[key] == pytest.approx(np.mean([s[DEFAULT_SELECT] for s in ft["folds"].values()]))
    # 30 images: the search's one-SE regime, so fine-tuning must win by more than one SE of the fold differences
    assert "one SE" in ft["rule"] and ft["difference_se"] >= 0
    assert ft["chosen"] == (ft[key] - ft["features_" + key] > ft["difference_se"])
    assert m["kind"] == ("cnn" if ft["chosen"] else "head") and "fine-tuning: tried on" in out

    import vinspect.selection.finetune as F

    real = F.compare_finetune

    def wins(ft, rows, y, folds, n_folds, *a, **kw):  # one inner fold (time), then the win
        return {**real(ft, rows, y, folds, 1, *a, **kw), "chosen": True}

    monkeypatch.setattr(F, "compare_finetune", wins)
    code, out, err = run(capfd, "train", neu_small, "--auto", "finetune", "--budget", "2h", "--out",
                         tmp_path / "f", "-q")
    assert code == 0, err
    m = json.loads((tmp_path / "f" / "model.json").read_text())
    assert m["kind"] == "cnn" and m["config"]["method"] == "finetune"
    assert m["metrics"]["selection"]["chosen"]["method"] == "finetune"
    assert m["training"]["selection"]["candidates"]
    code, out, err = run(capfd, "predict", tmp_path / "f", neu_small / "scratches", "--json", "-q")
    assert code == 0, err
    assert sum(r["label"] == "scratches" for r in json.loads(out)) >= 8
