"""Materialise the ELPV solar-cell data set (PyPI package ``elpv-dataset``) as a vinspect image folder.

The ELPV data set holds 2,624 electroluminescence (EL) images of solar cells, 300x300 pixels, 8-bit
grey, cut from 44 photovoltaic modules.  Each cell is annotated with a defect probability of 0, 1/3,
2/3 or 1 and with the type of its module (``mono`` or ``poly`` crystalline).

    Deitsch, S.; Christlein, V.; Berger, S.; Buerhop-Lutz, C.; Maier, A.; Gallwitz, F. & Riess, C.
    Automatic classification of defective photovoltaic module cells in electroluminescence images.
    Solar Energy 185 (2019) 455-468.  doi:10.1016/j.solener.2019.02.067

    Buerhop-Lutz, C.; Deitsch, S.; Maier, A. et al.  A Benchmark for Visual Identification of Defective
    Solar Cells in Electroluminescence Imagery.  EU PVSEC 2018.  doi:10.4229/35thEUPVSEC20182018-5CV.3.15

Licence: the images and annotations are CC BY-NC-SA 4.0 (attribution, non-commercial use only,
share-alike); the package's code is Apache-2.0.  The folder written here is a copy of that data and
carries the same licence.  Source: https://github.com/zae-bayern/elpv-dataset

Layout written (``OUT/<class>/<name>.png``, the package's own PNG files copied byte for byte, under
their original names such as ``cell0001.png``):

* default: ``functional`` (probability 0) and ``defective`` (probability 1); the 1/3 and 2/3 cells
  are left out;
* ``--all-grades``: ``p0``, ``p033``, ``p067``, ``p1`` (every cell);
* ``--type mono|poly|all`` keeps the cells of one module type (default all).

Re-running overwrites files of the same name and leaves unchanged ones alone (quick when complete);
``cellNNNN.png`` files in the class folders this module writes that the current options do not select
(left over from a run with other options) are removed, so ``OUT`` always matches the last run.
Nothing else in ``OUT`` is touched.

    python -m vinspect.data.elpv OUT [--all-grades] [--type mono|poly|all]

The labels are read from the package's ``data/labels.csv`` (the file that
``elpv_dataset.utils.load_dataset`` reads); ``load_dataset`` itself is not used because it decodes all
2,624 images into one array and drops the file names.
"""

from __future__ import annotations

import argparse
import filecmp
import os
import re
import shutil
import sys
import time
from pathlib import Path

from ..errors import VinspectError

INSTALL_HINT = "install it with: pip install elpv-dataset"

BINARY_CLASSES = {0: "functional", 3: "defective"}  # grade = probability * 3
GRADE_CLASSES = {0: "p0", 1: "p033", 2: "p067", 3: "p1"}
CELL_TYPES = ("mono", "poly", "all")
_ALL_CLASS_NAMES = tuple(BINARY_CLASSES.values()) + tuple(GRADE_CLASSES.values())
_OUR_FILE = re.compile(r"^cell\d+\.png$")
_TMP_PREFIX = ".elpv-tmp-"


class ElpvNotInstalledError(VinspectError, ImportError):
    """The package ``elpv_dataset`` is not installed."""


class ElpvDataError(VinspectError):
    """The installed package's data is not laid out as expected."""


def _package_data_dir() -> Path:
    import importlib.util

    try:
        spec = importlib.util.find_spec("elpv_dataset")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise ElpvNotInstalledError(f"the package elpv_dataset is not installed; {INSTALL_HINT}")
    for loc in spec.submodule_search_locations:
        data = Path(loc) / "data"
        if (data / "labels.csv").is_file():
            return data
    raise ElpvDataError(f"elpv_dataset is installed but has no data/labels.csv "
                        f"(looked in {', '.join(spec.submodule_search_locations)}); reinstall it")


def read_labels(data_dir: Path | None = None) -> list[tuple[Path, int, str]]:
    """``labels.csv`` -> ``[(image path, grade 0..3, 'mono'|'poly'), ...]`` in the package's order.

    ``grade`` is the defect probability times 3 (0, 1/3, 2/3, 1 -> 0, 1, 2, 3).
    """
    data_dir = _package_data_dir() if data_dir is None else Path(data_dir)
    csv = data_dir / "labels.csv"
    rows: list[tuple[Path, int, str]] = []
    with open(csv, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != 3:
                raise ElpvDataError(f"{csv}:{lineno}: expected 'path probability type', got {line.strip()!r}")
            rel, prob_s, ctype = fields
            try:
                prob = float(prob_s)
            except ValueError:
                raise ElpvDataError(f"{csv}:{lineno}: probability {prob_s!r} is not a number") from None
            grade = round(prob * 3)
            if not 0 <= grade <= 3 or abs(prob * 3 - grade) > 1e-6:
                raise ElpvDataError(f"{csv}:{lineno}: probability {prob_s} is not one of 0, 1/3, 2/3, 1")
            if ctype not in ("mono", "poly"):
                raise ElpvDataError(f"{csv}:{lineno}: cell type {ctype!r} is neither mono nor poly")
            path = data_dir / rel
            if not _OUR_FILE.match(path.name):
                raise ElpvDataError(f"{csv}:{lineno}: unexpected image name {rel!r}")
            rows.append((path, grade, ctype))
    if not rows:
        raise ElpvDataError(f"{csv}: no labels")
    return rows


def _plan(rows, all_grades: bool, cell_type: str) -> dict[str, list[Path]]:
    classes = GRADE_CLASSES if all_grades else BINARY_CLASSES
    plan: dict[str, list[Path]] = {name: [] for name in classes.values()}
    for path, grade, ctype in rows:
        if cell_type != "all" and ctype != cell_type:
            continue
        if grade in classes:
            plan[classes[grade]].append(path)
    return plan


def _copy_if_changed(src: Path, dst: Path) -> bool:
    """Copy ``src`` to ``dst`` unless ``dst`` already holds the same bytes; True when copied."""
    if dst.is_file() and filecmp.cmp(src, dst, shallow=True):  # same size+mtime, or same bytes
        return False
    tmp = dst.with_name(_TMP_PREFIX + dst.name)  # a dot-file: scan_folder ignores it if left behind
    shutil.copy2(src, tmp)
    os.replace(tmp, dst)
    return True


def materialize(out: str | Path, all_grades: bool = False, cell_type: str = "all",
                stats: dict | None = None) -> dict[str, int]:
    """Write the ELPV cells as ``out/<class>/<name>.png``; return the number of images per class.

    ``stats``, when given, receives ``copied``, ``unchanged`` and ``removed`` counts.
    Raises :class:`ElpvNotInstalledError` when the package is missing.
    """
    if cell_type not in CELL_TYPES:
        raise ValueError(f"cell_type must be one of {', '.join(CELL_TYPES)}, not {cell_type!r}")
    rows = read_labels()
    plan = _plan(rows, all_grades, cell_type)
    out = Path(out).expanduser()
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"{out}: exists and is not a directory")

    copied = unchanged = removed = 0
    wanted: dict[str, set[str]] = {name: {p.name for p in paths} for name, paths in plan.items()}
    for name, paths in plan.items():
        (out / name).mkdir(parents=True, exist_ok=True)
        for src in paths:
            if not src.is_file():
                raise ElpvDataError(f"{src}: listed in labels.csv but missing; reinstall elpv-dataset")
            if _copy_if_changed(src, out / name / src.name):
                copied += 1
            else:
                unchanged += 1

    # leftovers of a run with other options: only our own file names, only in our class folders
    for name in _ALL_CLASS_NAMES:
        folder = out / name
        if not folder.is_dir():
            continue
        keep = wanted.get(name, set())
        for entry in folder.iterdir():
            if entry.is_file() and ((_OUR_FILE.match(entry.name) and entry.name not in keep)
                                    or entry.name.startswith(_TMP_PREFIX)):
                entry.unlink()
                removed += 1
        if name not in wanted:
            try:
                folder.rmdir()  # only succeeds when nothing else is in it
            except OSError:
                pass

    if stats is not None:
        stats.update(copied=copied, unchanged=unchanged, removed=removed)
    return {name: len(paths) for name, paths in plan.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m vinspect.data.elpv",
        description="Write the ELPV solar-cell EL images (pip package elpv-dataset, CC BY-NC-SA 4.0, "
                    "Deitsch et al., Solar Energy 2019) as OUT/<class>/<name>.png.")
    ap.add_argument("out", metavar="OUT", help="output folder (created if missing)")
    ap.add_argument("--all-grades", action="store_true",
                    help="four classes p0, p033, p067, p1 instead of functional (p=0) / defective (p=1)")
    ap.add_argument("--type", dest="cell_type", choices=CELL_TYPES, default="all",
                    help="module type to keep (default: all)")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    stats: dict = {}
    try:
        counts = materialize(args.out, all_grades=args.all_grades, cell_type=args.cell_type, stats=stats)
    except ElpvNotInstalledError:
        print(f"elpv: the package elpv_dataset is not installed; {INSTALL_HINT}", file=sys.stderr)
        return 2
    except (ElpvDataError, OSError) as e:
        print(f"elpv: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("elpv: interrupted", file=sys.stderr)
        return 130
    summary = " ".join(f"{k}={v}" for k, v in counts.items())
    print(f"elpv -> {args.out}: {summary} (total {sum(counts.values())}, type {args.cell_type}; "
          f"{stats['copied']} written, {stats['unchanged']} unchanged, {stats['removed']} stale removed; "
          f"{time.perf_counter() - t0:.1f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
