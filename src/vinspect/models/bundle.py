"""The model bundle: one typed, versioned description of every trained model, whatever its task.

A bundle is a directory: ``model.json`` (this module's :class:`Bundle`, validated on load) and the weights in
formats that run no code on load (skops with an exact allow-list of types, safetensors, ONNX), each file's
sha256 recorded in ``model.json`` and checked on load.

``format_version`` 2 is this shape.  Bundles written by vinspect 0.1 (``format_version`` 1, the untyped dict of
``vinspect train``) are upgraded in memory by :func:`upgrade_v1`; a bundle from a newer vinspect is refused.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
from dataclasses import dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable


from ..data.preprocessing import COLOURS, RESIZE_MODES, Preprocessing  # noqa: F401 (re-exported)
from ..errors import BadInputError

FORMAT_VERSION = 2
TASKS = ("classify", "anomaly", "segment", "detect")
MODEL_FILE = "model.json"


def versions() -> dict:
    """The versions of Python and of the packages that shape a model's numbers."""
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for pkg in ("vinspect", "torch", "timm", "scikit-learn", "numpy", "skops", "h5py", "onnxruntime", "openvino"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while b := f.read(chunk):
            h.update(b)
    return h.hexdigest()


@dataclass
class Bundle:
    """What ``model.json`` holds.  ``config`` is the kind's own (JSON) settings; everything else is common."""

    task: str
    kind: str
    classes: list[str]
    preprocessing: Preprocessing
    backbone: dict | None = None
    config: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    training: dict = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION
    created_at: str = ""
    versions: dict = field(default_factory=dict)
    upgraded_from: int | None = None
    path: Path | None = None

    def to_json(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("path", "upgraded_from")}
        d["preprocessing"] = self.preprocessing.as_dict()
        return d

    def file(self, name: str) -> Path:
        """The path of one of the bundle's files."""
        if self.path is None:
            raise BadInputError("this bundle has not been saved or loaded from a folder")
        return self.path / name


# ------------------------------------------------------------------------------------------ validation


_SCHEMA = {  # key -> (types, required)
    "format_version": ((int,), True), "task": ((str,), True), "kind": ((str,), True), "classes": ((list,), True),
    "preprocessing": ((dict,), True), "backbone": ((dict, type(None)), False), "config": ((dict,), False),
    "metrics": ((dict,), False), "training": ((dict,), False), "files": ((dict,), False),
    "created_at": ((str,), False), "versions": ((dict,), False),
}


def _type_name(types) -> str:
    names = {int: "an integer", str: "a string", list: "a list", dict: "an object", type(None): "null"}
    return " or ".join(names[t] for t in types)


def from_json(d, where: str = MODEL_FILE) -> Bundle:
    """Validate a ``model.json`` object (upgraded first when it is a 0.1 bundle); one-line errors name the key."""
    if not isinstance(d, dict):
        raise BadInputError(f"{where}: expected a JSON object, got {type(d).__name__}")
    fv = d.get("format_version", 1)
    if isinstance(fv, bool) or not isinstance(fv, int):
        raise BadInputError(f"{where}: format_version {fv!r} is not an integer")
    if fv > FORMAT_VERSION:
        raise BadInputError(f"{where}: format version {fv} is newer than this vinspect reads ({FORMAT_VERSION}); "
                            f"upgrade vinspect")
    upgraded = None
    if fv < 2:
        d = upgrade_v1(d, where)
        upgraded = fv
    for key, (types, required) in _SCHEMA.items():
        if key not in d:
            if required:
                raise BadInputError(f"{where}: missing key {key!r}")
            continue
        if isinstance(d[key], bool) or not isinstance(d[key], types):
            raise BadInputError(f"{where}: {key} must be {_type_name(types)}, got {type(d[key]).__name__}")
    if d["task"] not in TASKS:
        raise BadInputError(f"{where}: unknown task {d['task']!r} (known: {', '.join(TASKS)})")
    classes = d["classes"]
    if not classes or not all(isinstance(c, str) and c for c in classes):
        raise BadInputError(f"{where}: classes must be a non-empty list of non-empty strings")
    if len(set(classes)) != len(classes):
        dup = sorted({c for c in classes if classes.count(c) > 1})
        raise BadInputError(f"{where}: classes are not unique ({', '.join(dup)})")
    try:
        pre = Preprocessing.from_dict(d["preprocessing"])
    except KeyError as e:
        raise BadInputError(f"{where}: preprocessing: missing key {e.args[0]!r}") from None
    except (TypeError, ValueError) as e:
        raise BadInputError(f"{where}: preprocessing: {e}") from None
    files = d.get("files", {})
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in files.items()):
        raise BadInputError(f"{where}: files must map file names to sha256 strings")
    for name in files:
        if Path(name).is_absolute() or ".." in Path(name).parts:
            raise BadInputError(f"{where}: file {name!r} lies outside the bundle")
    return Bundle(task=d["task"], kind=d["kind"], classes=list(classes), preprocessing=pre,
                  backbone=d.get("backbone"), config=d.get("config", {}), metrics=d.get("metrics", {}),
                  training=d.get("training", {}), files=dict(files), format_version=FORMAT_VERSION,
                  created_at=d.get("created_at", ""), versions=d.get("versions", {}), upgraded_from=upgraded)


def upgrade_v1(m: dict, where: str = MODEL_FILE) -> dict:
    """A vinspect 0.1 ``model.json`` (``vinspect train``: a head, or a CNN with ``method`` transfer/finetune/
    scratch) -> the format-2 object.  Nothing on disk changes."""
    method = m.get("method", "head")

    def need(*keys):
        for k in keys:
            if k not in m:
                raise BadInputError(f"{where}: missing key {k!r}")

    need("classes", "preprocessing")
    pre = m["preprocessing"]
    if not isinstance(pre, dict):
        raise BadInputError(f"{where}: preprocessing must be an object")
    common = {"format_version": FORMAT_VERSION, "task": "classify", "classes": m["classes"],
              "metrics": m.get("metrics", {}), "created_at": m.get("created_at", ""),
              "versions": m.get("versions", {})}
    try:
        if method == "head":
            need("backbone", "layer", "pool", "weights", "head")
            size = int(pre["input_size"])
            w = m["weights"] if isinstance(m["weights"], dict) else {}
            head = m["head"] if isinstance(m["head"], dict) else {"name": str(m["head"])}
            files = {m.get("head_file", "head.skops"): ""}  # 0.1 recorded no sha256: checked only for presence
            if m.get("backbone_onnx"):
                files[m["backbone_onnx"]] = ""
            return {**common, "kind": "head",
                    "preprocessing": {"width": size, "height": size, "resize": pre.get("resize", "squash"),
                                      "colour": "rgb", "mean": pre["mean"], "std": pre["std"],
                                      "interpolation": pre.get("interpolation", "bicubic")},
                    "backbone": {"name": m["backbone"], "arch": m.get("arch"), "layer": m["layer"],
                                 "pool": m["pool"], "weights_sha256": w.get("sha256"),
                                 "weights_path": w.get("path"), "random_init": bool(w.get("random_init", False))},
                    "config": {"head": head, "head_file": m.get("head_file", "head.skops"),
                               "feature_dim": m.get("feature_dim"), "engine": m.get("engine", "torch"),
                               "quantize": m.get("quantize"), "backbone_onnx": m.get("backbone_onnx")},
                    "training": m.get("training_data", {}), "files": files}
        need("net", "members")
        net = m["net"]
        h, w_ = (int(v) for v in pre["input_size"])
        pw = m.get("pretrained_weights") or {}
        backbone = None
        if net.get("kind") == "backbone":
            backbone = {"name": net["backbone"], "arch": net.get("arch"), "layer": net["layer"], "pool": "avg",
                        "weights_sha256": pw.get("sha256"), "weights_path": pw.get("path"), "random_init": False}
        return {**common, "kind": "cnn",
                "preprocessing": {"width": w_, "height": h, "resize": pre.get("resize", "squash"),
                                  "colour": "grey" if pre.get("grey") else "rgb", "mean": pre.get("mean", [0.5] * 3),
                                  "std": pre.get("std", [0.5] * 3),
                                  "interpolation": pre.get("interpolation", "bilinear")},
                "backbone": backbone,
                "config": {"method": method, "net": net, "members": list(m["members"]),
                           "ensemble": m.get("ensemble"), "hyperparameters": m.get("hyperparameters", {}),
                           "history_file": m.get("history_file")},
                "training": {**(m.get("training_data") or {}), "runs": m.get("training", [])},
                "files": {f: "" for f in m["members"]}}
    except (KeyError, TypeError, ValueError) as e:
        raise BadInputError(f"{where}: a vinspect 0.1 model that cannot be read ({type(e).__name__}: {e})") from None


# ------------------------------------------------------------------------------------------ disk


def save_bundle(directory: str | Path, bundle: Bundle, writers: dict[str, Callable[[Path], None]]) -> Path:
    """Write the bundle's files (``writers``: name -> function writing that file) and ``model.json``.

    Each file is written beside its place under a temporary name and moved into place; ``model.json``, which
    records every file's sha256, is written last the same way, so a reader never sees a half-written file and
    a bundle whose files do not match its ``model.json`` is refused on load.
    """
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    tmp = {}
    try:
        for name, write in writers.items():
            target = d / name
            target.parent.mkdir(parents=True, exist_ok=True)
            part = target.with_name(f".{target.name}.{os.getpid()}.part")
            write(part)
            tmp[name] = part
        files = {name: file_sha256(p) for name, p in tmp.items()}
        for name, p in tmp.items():
            os.replace(p, d / name)
    finally:
        for p in tmp.values():
            Path(p).unlink(missing_ok=True)
    bundle.files = {**{k: v for k, v in bundle.files.items() if k not in files and (d / k).is_file()}, **files}
    bundle.format_version = FORMAT_VERSION
    bundle.created_at = bundle.created_at or datetime.now(timezone.utc).isoformat(timespec="seconds")
    bundle.versions = bundle.versions or versions()
    from_json(json.loads(json.dumps(bundle.to_json())), str(d / MODEL_FILE))  # never write what load refuses
    part = d / f".{MODEL_FILE}.{os.getpid()}.part"
    part.write_text(json.dumps(bundle.to_json(), indent=2) + "\n")
    os.replace(part, d / MODEL_FILE)
    bundle.path = d
    return d


def load_bundle(directory: str | Path, check_files: bool = True) -> Bundle:
    """Read and validate ``directory/model.json``; every recorded file must exist and match its sha256."""
    d = Path(directory)
    mj = d / MODEL_FILE
    if not d.is_dir() or not mj.is_file():
        raise BadInputError(f"{d}: not a vinspect model directory (no {MODEL_FILE}); create one with vinspect train")
    try:
        raw = json.loads(mj.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BadInputError(f"{mj}: unreadable ({e})") from None
    b = from_json(raw, str(mj))
    b.path = d
    if check_files:
        for name, sha in b.files.items():
            p = d / name
            if not p.is_file():
                raise BadInputError(f"{p}: missing file of the model")
            if sha and file_sha256(p) != sha:
                raise BadInputError(f"{p}: sha256 differs from the one recorded in {MODEL_FILE} (changed or damaged)")
    return b
