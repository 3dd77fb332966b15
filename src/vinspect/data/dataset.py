"""Image folders -> :class:`Dataset` (paths, labels, class names) and the files that were left out."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import BadInputError
from .decode import IMAGE_EXTENSIONS


@dataclass
class Skipped:
    path: str
    reason: str

    def as_dict(self) -> dict:
        return {"path": self.path, "reason": self.reason}


@dataclass
class Dataset:
    """A labelled list of image files.

    ``paths`` are absolute; ``relpaths`` are relative to ``root``; ``labels`` index into ``classes``.
    """

    root: Path
    paths: list[Path]
    labels: list[int]
    classes: list[str]
    skipped: list[Skipped] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def relpaths(self) -> list[str]:
        return [_rel(p, self.root) for p in self.paths]

    def class_counts(self) -> dict[str, int]:
        counts = {c: 0 for c in self.classes}
        for y in self.labels:
            counts[self.classes[y]] += 1
        return counts

    def subset(self, keep: list[int]) -> "Dataset":
        return Dataset(self.root, [self.paths[i] for i in keep], [self.labels[i] for i in keep],
                       list(self.classes), list(self.skipped))


def _rel(p: Path, root: Path) -> str:
    try:
        return p.relative_to(root).as_posix()
    except ValueError:
        return p.as_posix()


def _walk(folder: Path, onerror=None):
    """Files below ``folder`` in sorted order, hidden files and folders left out."""
    for dirpath, dirnames, filenames in os.walk(folder, onerror=onerror):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for fn in sorted(filenames):
            if not fn.startswith("."):
                yield Path(dirpath) / fn


def parse_class_map(specs: list[str] | dict | None) -> dict[str, str] | None:
    """``["intact=low,medium", "damaged=high"]`` (or a dict) -> ``{folder: new_name}``.

    A spec without ``=`` keeps a folder under its own name, so ``--classes a --classes b`` selects folders.
    """
    if not specs:
        return None
    items: list[tuple[str, list[str]]] = []
    if isinstance(specs, dict):
        for new, olds in specs.items():
            items.append((str(new), [olds] if isinstance(olds, str) else [str(o) for o in olds]))
    else:
        for spec in specs:
            spec = str(spec).strip()
            if "=" in spec:
                new, _, olds = spec.partition("=")
                folders = [o.strip() for o in olds.split(",") if o.strip()]
                if not new.strip() or not folders:
                    raise BadInputError(f"--classes {spec!r}: expected NEW=FOLDER[,FOLDER...]")
                items.append((new.strip(), folders))
            else:
                items.append((spec, [spec]))
    mapping: dict[str, str] = {}
    for new, folders in items:
        for f in folders:
            if f in mapping and mapping[f] != new:
                raise BadInputError(f"--classes: folder {f!r} is mapped to both {mapping[f]!r} and {new!r}")
            mapping[f] = new
    return mapping


def scan_folder(root: str | Path, classes: list[str] | dict | None = None, min_classes: int = 2) -> Dataset:
    """Scan ``root/<class>/**/<image>``.

    Files without an image extension are listed in ``skipped`` (they are not decoded); unreadable
    sub-folders likewise.  Refuses (``BadInputError``) a missing or unreadable root, a root without
    class folders, an empty class and fewer than ``min_classes`` classes.
    """
    root = Path(root).expanduser()
    if not root.exists():
        raise BadInputError(f"{root}: no such directory")
    if not root.is_dir():
        raise BadInputError(f"{root}: not a directory (expected one sub-folder per class)")
    if not os.access(root, os.R_OK | os.X_OK):
        raise BadInputError(f"{root}: permission denied")
    root = root.resolve()
    mapping = parse_class_map(classes)
    skipped: list[Skipped] = []
    try:
        entries = sorted(root.iterdir())
    except OSError as e:
        raise BadInputError(f"{root}: cannot list ({e.strerror})") from None
    folders = [e for e in entries if e.is_dir() and not e.name.startswith(".")]
    for e in entries:
        if e.is_file() and not e.name.startswith("."):
            skipped.append(Skipped(_rel(e, root), "file at top level, not inside a class folder"))
    if not folders:
        raise BadInputError(f"{root}: no class sub-folders (expected {root.name}/<class>/<image files>)")
    if mapping is not None:
        names = {f.name for f in folders}
        missing = sorted(set(mapping) - names)
        if missing:
            raise BadInputError(f"--classes names folder(s) {', '.join(missing)} that {root} does not have "
                                f"(it has: {', '.join(sorted(names))})")
        folders = [f for f in folders if f.name in mapping]
    per_class: dict[str, list[Path]] = {}
    for folder in folders:
        name = mapping[folder.name] if mapping is not None else folder.name
        files = per_class.setdefault(name, [])
        for p in _walk(folder, onerror=lambda e: skipped.append(
                Skipped(_rel(Path(e.filename), root), f"unreadable folder ({e.strerror}), skipped"))):
            if p.suffix.lower() in IMAGE_EXTENSIONS:
                files.append(p)
            else:
                skipped.append(Skipped(_rel(p, root), f"not an image file (extension {p.suffix or 'none'}), skipped"))
    empty = [c for c, fs in per_class.items() if not fs]
    if empty:
        raise BadInputError(f"{root}: class folder(s) without images: {', '.join(empty)} "
                            "(remove them or select classes with --classes)")
    class_names = sorted(per_class)
    if len(class_names) < min_classes:
        raise BadInputError(f"{root}: found {len(class_names)} class ({', '.join(class_names)}); "
                            f"a classifier needs at least {min_classes} class folders")
    paths, labels = [], []
    for i, c in enumerate(class_names):
        for p in per_class[c]:
            paths.append(p)
            labels.append(i)
    return Dataset(root, paths, labels, class_names, skipped)


def collect_images(inputs: list[str | Path]) -> tuple[list[Path], list[Skipped]]:
    """Files and folders (searched recursively) -> image files, for prediction."""
    out: list[Path] = []
    skipped: list[Skipped] = []
    for item in inputs:
        p = Path(item).expanduser()
        if p.is_dir():
            for f in _walk(p):
                if f.suffix.lower() in IMAGE_EXTENSIONS:
                    out.append(f)
                else:
                    skipped.append(Skipped(str(f), f"not an image file (extension {f.suffix or 'none'})"))
        elif p.is_file():
            out.append(p)
        else:
            raise BadInputError(f"{p}: no such file or directory")
    return out, skipped


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()
