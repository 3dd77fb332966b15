"""Batch prediction on a real Ray cluster (vinspect.distributed, ``--ray``).

The cluster is real: a head and a second node, each its own ``ray start`` on a loopback address (127.0.0.2,
127.0.0.3), one CPU each, a small object store, no dashboard, a private temporary folder; it is always stopped
(by the pids of its own processes).  The tests skip with the reason where Ray is not installed or cannot start.
The fast tests at the top need no cluster.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import NEU, need
from serving_support import small_model

N_PER_CLASS = 50  # 6 NEU classes: 300 real images


def _need_ray():
    for name in ("ray", "ray.data", "pyarrow", "psutil"):  # found, not imported (Ray is imported by the run)
        try:
            found = importlib.util.find_spec(name) is not None
        except ModuleNotFoundError:
            found = False
        if not found:
            pytest.skip(f"{name} is not installed (pip install 'vinspect[ray]')")


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """300 real NEU images (50 of each class), copied into one folder tree."""
    src = need(NEU)
    dst = tmp_path_factory.mktemp("neu300")
    for cls in sorted(p.name for p in src.iterdir() if p.is_dir()):
        (dst / cls).mkdir()
        for p in sorted((src / cls).glob("*.jpg"))[:N_PER_CLASS]:
            shutil.copy(p, dst / cls / p.name)
    return dst


@pytest.fixture(scope="module")
def model(neu_small, tmp_path_factory) -> Path:
    os.environ["VINSPECT_CACHE"] = str(tmp_path_factory.getbasetemp() / "feature-cache")
    return small_model(neu_small)


@pytest.fixture(scope="module")
def local_rows(model, images) -> dict:
    """The reference: a local run of the same model on the same files (no Ray), by absolute path."""
    from vinspect.models.predictor import load_predictor

    rows, skipped = load_predictor(model, batch_size=16).predict([images], progress=False)
    assert not skipped and len(rows) == 6 * N_PER_CLASS
    return {os.path.abspath(r["path"]): r for r in rows}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, local_rows):
    """A head and one more node on loopback, 1 CPU each; stopped at the end whatever happens."""
    _need_ray()
    from vinspect.distributed.cluster import ClusterUnavailable, LocalCluster

    env = {"VINSPECT_CACHE": str(tmp_path_factory.getbasetemp() / "feature-cache"), "HF_HUB_OFFLINE": "1",
           "TQDM_DISABLE": "1"}
    c = LocalCluster(nodes=2, cpus=1, object_store_bytes=80_000_000, env=env)
    try:
        c.start()
    except ClusterUnavailable as e:
        pytest.skip(f"Ray cannot start a local cluster here: {e}")
    try:
        yield c
    finally:
        c.stop()
    assert all(n.raylet() is None for n in c.nodes)


def _check_against_local(out: Path, local_rows: dict) -> dict:
    """Every input exactly once, no errors, labels identical and probabilities within 1e-5 of the local run."""
    from vinspect.data.dataset import file_sha256
    from vinspect.distributed import read_results

    table = read_results(out)
    rows = table.to_pylist()
    paths = [r["path"] for r in rows]
    assert len(paths) == len(set(paths)), "a path appears twice"
    assert set(paths) == set(local_rows), "inputs missing or foreign paths"
    classes = json.loads(table.schema.metadata[b"vinspect"])["classes"]
    for r in rows:
        ref = local_rows[r["path"]]
        assert r["error"] is None
        assert r["label"] == ref["label"], r["path"]
        assert r["probabilities"] == pytest.approx([ref["probabilities"][c] for c in classes], abs=1e-5)
    for r in rows[:: max(1, len(rows) // 20)]:
        assert r["sha256"] == file_sha256(r["path"])
    return json.loads((out / "_summary.json").read_text())


# -- without a cluster ------------------------------------------------------------------------------------


def test_sink_keeps_each_path_once_and_refuses_other_settings(tmp_path):
    pa = pytest.importorskip("pyarrow", reason="pyarrow is not installed (pip install 'vinspect[ray]')")
    from vinspect.distributed.batch import ParquetSink, PredictJob, read_results
    from vinspect.errors import BadInputError

    job = PredictJob("/m", {}, ["a", "b"], "classify", "0" * 64)
    schema = job.schema()

    def table(paths):
        n = len(paths)
        return pa.table({"path": paths, "sha256": ["x"] * n, "label": ["a"] * n, "score": [0.9] * n,
                         "probabilities": [[0.9, 0.1]] * n, "error": [None] * n, "node": ["n1"] * n})

    sink = ParquetSink(tmp_path / "out", schema, job.identity(), rows_per_file=2)
    assert sink.write(table(["/a", "/b", "/c"])) == [0, 1, 2]
    assert sink.write(table(["/b", "/d"])) == [1]  # /b came back twice (a retried block): dropped
    sink.close()
    assert sorted(read_results(tmp_path / "out").column("path").to_pylist()) == ["/a", "/b", "/c", "/d"]
    assert sink.duplicates_dropped == 1 and len(sink.files) == 2
    (tmp_path / "out" / ".part-left-by-a-crash.parquet.tmp").write_bytes(b"half")
    again = ParquetSink(tmp_path / "out", schema, job.identity())  # resume: what is written is done
    assert again.done == {"/a", "/b", "/c", "/d"} and not list((tmp_path / "out").glob(".part-*"))
    with pytest.raises(BadInputError, match="another run is writing"):
        ParquetSink(tmp_path / "out", schema, job.identity())
    again.close()
    other = PredictJob("/m", {}, ["a", "b"], "classify", "1" * 64)
    with pytest.raises(BadInputError, match="other settings or another model"):
        ParquetSink(tmp_path / "out", other.schema(), other.identity())


def test_predict_without_ray_imports_no_ray(model, neu_small, tmp_path):
    """The local path is unchanged and never imports Ray; --ray with --json is refused in one line."""
    code = (
        "import sys; from vinspect.cli import main\n"
        f"rc = main(['predict', {str(model)!r}, {str(neu_small / 'crazing')!r}, '--json', '-q'])\n"
        "assert rc == 0, rc\n"
        "assert not [m for m in sys.modules if m == 'ray' or m.startswith('ray.')], 'ray imported'\n"
        f"rc = main(['predict', {str(model)!r}, {str(neu_small)!r}, '--ray', 'local', '--out', "
        f"{str(tmp_path / 'o')!r}, '--json'])\n"
        "assert rc == 2, rc\n")
    r = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert r.returncode == 0, r.stderr[-2000:]
    assert "--json, --csv and --maps are for runs without --ray" in r.stderr


# -- on a real two-node cluster ---------------------------------------------------------------------------


@pytest.mark.slow
def test_predict_on_two_nodes_equals_local_and_resumes(cluster, model, images, local_rows, tmp_path, capsys):
    from vinspect.cli import main

    out = tmp_path / "pred"
    rc = main(["predict", str(model), str(images), "--ray", cluster.address, "--out", str(out),
               "--batch-size", "16", "-q"])
    assert rc == 0, capsys.readouterr().err
    summary = _check_against_local(out, local_rows)
    assert summary["n_written"] == len(local_rows) and summary["duplicates_dropped"] == 0
    assert len(summary["per_node"]) == 2, summary["per_node"]  # both nodes computed
    assert sum(n["images"] for n in summary["per_node"].values()) == len(local_rows)
    printed = capsys.readouterr().out
    assert f"{len(local_rows)} prediction rows" in printed and printed.count("  node 127.0.0.") == 2

    # an interrupted run: the rows of one file never made it to disk -> the re-run computes only those
    parts = sorted(out.glob("part-*.parquet"))
    import pyarrow.parquet as pq

    lost = pq.read_table(parts[0]).num_rows
    parts[0].unlink()
    rc = main(["predict", str(model), str(images), "--ray", cluster.address, "--out", str(out),
               "--batch-size", "16", "-q"])
    assert rc == 0, capsys.readouterr().err
    summary = _check_against_local(out, local_rows)
    assert (summary["n_already"], summary["n_written"]) == (len(local_rows) - lost, lost)


@pytest.mark.slow
def test_killed_workers_lose_and_duplicate_nothing(cluster, model, images, local_rows, tmp_path):
    """The second node's worker processes are killed while the run is under way; Ray restarts the actor and
    retries its blocks; the output still holds every input exactly once, equal to the local run."""
    from vinspect.data.dataset import collect_images
    from vinspect.distributed import PredictJob, run

    extra = cluster.nodes[1]
    kills: list = []

    def on_batch(done, per_node):
        if kills or done >= len(local_rows):
            return
        procs = [p for p in extra.worker_processes() if "Agent" not in p.name()]  # the workers, not the agents
        if any("MapWorker" in p.name() for p in procs):
            for p in procs:
                p.kill()
            kills.append((done, sorted(p.pid for p in procs)))

    paths, _ = collect_images([images])
    s = run(PredictJob.from_model(model, batch_size=8), paths, tmp_path / "fault", cluster.address, batch_size=8,
            rows_per_file=64, progress=False, on_batch=on_batch)
    assert kills, "the extra node never ran a worker to kill"
    done_at_kill, pids = kills[0]
    assert done_at_kill < len(local_rows) and pids
    assert s.n_written == len(local_rows) and s.n_errors == 0
    _check_against_local(tmp_path / "fault", local_rows)
    assert extra.raylet() is not None  # the node itself lived on: its workers were the ones killed


@pytest.mark.slow
def test_classify_extract_on_ray_equals_local_features(cluster, neu_small, tmp_path, capsys):
    """``classify extract --ray``: one row per image with its class folder and the same features as features.h5."""
    import numpy as np

    from vinspect.cli import main
    from vinspect.distributed import read_results
    from vinspect.features.extract import read_features_h5

    common = ["--image-size", "64", "--engine", "torch", "--batch-size", "8", "-q"]
    assert main(["classify", "extract", str(neu_small), "--out", str(tmp_path / "local")] + common) == 0
    local = read_features_h5(tmp_path / "local" / "features.h5")
    rc = main(["classify", "extract", str(neu_small), "--out", str(tmp_path / "ray"), "--ray", cluster.address]
              + common)
    assert rc == 0, capsys.readouterr().err
    rows = {Path(r["path"]).relative_to(neu_small).as_posix(): r for r in read_results(tmp_path / "ray").to_pylist()}
    assert sorted(rows) == sorted(local.relpaths)
    for i, rel in enumerate(local.relpaths):
        r = rows[rel]
        assert r["label"] == local.classes[local.labels[i]] and r["sha256"] == local.hashes[i]
        # float32 sums in another order (one engine thread per worker, every core locally): ~1e-5 on values ~4
        np.testing.assert_allclose(np.asarray(r["features"], np.float32), local.features[i], rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_workers_larger_than_any_node_are_refused(cluster, model, neu_small, tmp_path, capsys):
    """--ray-cpus above every node's CPUs would leave Ray waiting for ever: refused in one line instead."""
    from vinspect.cli import main

    rc = main(["predict", str(model), str(neu_small), "--ray", cluster.address, "--ray-cpus", "2", "--out",
               str(tmp_path / "o"), "-q"])
    assert rc == 2
    assert "--ray-cpus 2: no node of the cluster has that many CPUs (the largest has 1)" in capsys.readouterr().err
