"""Model bundles: a directory with ``model.json`` (everything needed to reproduce the inputs) and the head
saved with skops, a format that runs no code on load.  Only scikit-learn and NumPy types are trusted."""

from __future__ import annotations

import json
import platform
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from ..errors import BadInputError

FORMAT_VERSION = 1
HEAD_FILE = "head.skops"
TRUSTED_PREFIXES = ("sklearn.", "numpy.", "scipy.", "builtins.")


def versions() -> dict:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for pkg in ("vinspect", "torch", "timm", "scikit-learn", "numpy", "skops", "h5py", "onnxruntime"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


@dataclass
class ModelBundle:
    meta: dict
    head: object
    path: Path | None = None

    @property
    def method(self) -> str:
        return self.meta.get("method", "head")

    @property
    def classes(self) -> list[str]:
        return list(self.meta["classes"])


def save_bundle(directory: str | Path, head, meta: dict) -> Path:
    import skops.io as sio

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    meta = dict(meta)
    meta.setdefault("format_version", FORMAT_VERSION)
    meta.setdefault("created_at", datetime.now(timezone.utc).isoformat(timespec="seconds"))
    meta.setdefault("versions", versions())
    if head is not None:  # CNN bundles (method transfer/finetune/scratch) keep their weights in weights/
        meta["head_file"] = HEAD_FILE
        sio.dump(head, d / HEAD_FILE)
    (d / "model.json").write_text(json.dumps(meta, indent=2) + "\n")
    return d


def load_bundle(directory: str | Path) -> ModelBundle:
    import skops.io as sio

    d = Path(directory)
    mj = d / "model.json"
    if not d.is_dir() or not mj.is_file():
        raise BadInputError(f"{d}: not a vinspect model directory (no model.json); create one with vinspect train")
    try:
        meta = json.loads(mj.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise BadInputError(f"{mj}: unreadable ({e})") from None
    if int(meta.get("format_version", 0)) > FORMAT_VERSION:
        raise BadInputError(f"{mj}: format version {meta.get('format_version')} is newer than this vinspect "
                            f"reads ({FORMAT_VERSION}); upgrade vinspect")
    if meta.get("method", "head") != "head":
        if not isinstance(meta.get("members"), list) or not meta["members"]:
            raise BadInputError(f"{mj}: a {meta.get('method')} model without weight files")
        return ModelBundle(meta, None, d)
    hf = d / meta.get("head_file", HEAD_FILE)
    if not hf.is_file():
        raise BadInputError(f"{hf}: missing head file")
    try:
        untrusted = sio.get_untrusted_types(file=hf)
    except Exception as e:  # noqa: BLE001 - a damaged file is bad input
        raise BadInputError(f"{hf}: unreadable skops file ({e})") from None
    refused = [t for t in untrusted if not t.startswith(TRUSTED_PREFIXES)]
    if refused:
        raise BadInputError(f"{hf}: refuses to load types outside scikit-learn/NumPy: {', '.join(refused)}")
    head = sio.load(hf, trusted=untrusted)
    return ModelBundle(meta, head, d)
