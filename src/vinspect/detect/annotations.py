"""Box annotations: Pascal VOC XML, YOLO txt and COCO JSON, read into one internal form.

The internal form is one :class:`ImageBoxes` per image: the image file, its size, and its boxes as
``[x0, y0, x1, y1]`` in the image's pixels (floats, x to the right, y down) with a class name each.
VOC and COCO coordinates are taken as written (VOC ``xmin..xmax``, COCO ``[x, y, w, h]`` -> ``[x, y, x+w, y+h]``);
YOLO's normalised ``class cx cy w h`` are multiplied by the image's size.

Where annotations lie (``--boxes``):

* a folder of ``<image stem>.xml`` (VOC) or ``<image stem>.txt`` (YOLO; class names in ``classes.txt``, one a
  line, or ``data.yaml``'s ``names``, in that folder) — matched to the images by file stem;
* one ``.json`` file (COCO): ``images[].file_name`` matched by relative path, else by file name.

What goes wrong is named, one line each, and never stops the run while something usable is left: a box outside
the image (more than one pixel past its border; within a pixel it is clipped) or without area, an unknown class
name, an empty or unparsable annotation file, an image without annotations: each box or image is skipped and
listed (:attr:`DetData.problems`).  Nothing usable at all is a refusal (:class:`~vinspect.errors.BadInputError`).
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import BadInputError

FORMATS = ("voc", "yolo", "coco")
TOLERANCE = 1.0  # pixels a box may pass the image's border before it counts as outside


@dataclass
class ImageBoxes:
    path: Path
    relpath: str
    width: int
    height: int
    boxes: np.ndarray  # (K, 4) float32 xyxy, original pixels
    labels: list[str]

    def as_dict(self) -> dict:
        return {"path": self.relpath, "width": self.width, "height": self.height,
                "boxes": [[round(float(v), 2) for v in b] for b in self.boxes], "labels": list(self.labels)}


@dataclass
class Problem:
    path: str
    reason: str
    what: str = "skipped"  # "skipped image", "skipped box"

    def line(self) -> str:
        return f"{self.path}: {self.reason} ({self.what})"

    def as_dict(self) -> dict:
        return {"path": self.path, "reason": self.reason, "what": self.what}


@dataclass
class DetData:
    root: Path
    items: list[ImageBoxes]
    classes: list[str]
    fmt: str
    strata: np.ndarray  # one class index per image (its folder, else its most frequent box class): for splits
    problems: list[Problem] = field(default_factory=list)

    def label_indices(self, item: ImageBoxes) -> np.ndarray:
        return np.array([self.classes.index(c) for c in item.labels], np.int64)

    def summary(self) -> dict:
        counts = Counter(c for it in self.items for c in it.labels)
        return {"root": str(self.root), "format": self.fmt, "n_images": len(self.items),
                "n_boxes": int(sum(len(it.labels) for it in self.items)),
                "boxes_per_class": {c: int(counts.get(c, 0)) for c in self.classes},
                "n_problems": len(self.problems)}

    def subset(self, idx) -> DetData:
        idx = list(idx)
        return DetData(self.root, [self.items[i] for i in idx], list(self.classes), self.fmt,
                       self.strata[idx], list(self.problems))


# ------------------------------------------------------------------------------------------ readers


class AnnotationError(BadInputError):
    """One annotation file that cannot be used (the whole file)."""


def read_voc(path: str | Path) -> tuple[str | None, tuple[int, int] | None, list[tuple[str, list[float]]]]:
    """``(filename, (width, height) or None, [(class, [x0, y0, x1, y1]), ...])`` of one VOC XML file."""
    import xml.etree.ElementTree as ET

    p = Path(path)
    if p.stat().st_size == 0:
        raise AnnotationError("empty annotation file")
    try:
        root = ET.parse(p).getroot()
    except ET.ParseError as e:
        raise AnnotationError(f"XML does not parse ({e})") from None
    if root.tag != "annotation":
        raise AnnotationError(f"not a Pascal VOC annotation (root element <{root.tag}>)")
    size = None
    w, h = root.findtext("size/width"), root.findtext("size/height")
    try:
        if w and h:
            size = (int(float(w)), int(float(h)))
    except ValueError:
        size = None
    objs = []
    for k, o in enumerate(root.findall("object")):
        name = (o.findtext("name") or "").strip()
        try:
            box = [float(o.findtext(f"bndbox/{t}")) for t in ("xmin", "ymin", "xmax", "ymax")]
        except (TypeError, ValueError):
            box = None
        objs.append((name, box))
    return root.findtext("filename"), size, objs


def read_yolo(path: str | Path, width: int, height: int, names: list[str]) -> list[tuple[str, list[float] | None]]:
    """``[(class, [x0, y0, x1, y1] or None when the line is malformed), ...]`` of one YOLO txt file."""
    p = Path(path)
    text = p.read_text(errors="replace")
    out = []
    for line in text.splitlines():
        parts = line.split()
        if not parts:
            continue
        try:
            k = int(parts[0])
            cx, cy, bw, bh = (float(v) for v in parts[1:5])
            if len(parts) < 5:
                raise ValueError
        except ValueError:
            out.append((f"line {line.strip()[:40]!r}", None))
            continue
        name = names[k] if 0 <= k < len(names) else f"#{k}"
        out.append((name, [(cx - bw / 2) * width, (cy - bh / 2) * height, (cx + bw / 2) * width,
                           (cy + bh / 2) * height]))
    return out


def yolo_names(folder: Path) -> list[str]:
    """Class names of a YOLO folder: ``classes.txt`` (one a line) or ``data.yaml`` (``names``: list or mapping)."""
    ct = folder / "classes.txt"
    if ct.is_file():
        return [ln.strip() for ln in ct.read_text().splitlines() if ln.strip()]
    for y in ("data.yaml", "dataset.yaml"):
        if (folder / y).is_file():
            import yaml

            try:
                d = yaml.safe_load((folder / y).read_text())
            except yaml.YAMLError as e:
                raise BadInputError(f"{folder / y}: does not parse ({e})") from None
            names = (d or {}).get("names")
            if isinstance(names, dict):
                return [str(names[k]) for k in sorted(names)]
            if isinstance(names, list):
                return [str(n) for n in names]
    raise BadInputError(f"{folder}: YOLO labels need their class names: classes.txt (one a line) or data.yaml "
                        f"(names) in that folder")


def read_coco(path: str | Path) -> tuple[dict[str, tuple[tuple[int, int] | None, list]], list[str]]:
    """``({file_name: ((width, height), [(class, [x0, y0, x1, y1] or None)])}, category names)``."""
    p = Path(path)
    try:
        d = json.loads(p.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BadInputError(f"{p}: not readable COCO JSON ({e})") from None
    if not isinstance(d, dict) or not isinstance(d.get("images"), list) or not isinstance(d.get("categories"), list):
        raise BadInputError(f"{p}: not COCO detection JSON (needs images, annotations and categories lists)")
    cats = {c["id"]: str(c["name"]) for c in d["categories"] if isinstance(c, dict) and "id" in c and "name" in c}
    images = {}
    by_id = {}
    for im in d["images"]:
        if not isinstance(im, dict) or "file_name" not in im or "id" not in im:
            continue
        size = (int(im["width"]), int(im["height"])) if "width" in im and "height" in im else None
        images[str(im["file_name"])] = (size, [])
        by_id[im["id"]] = str(im["file_name"])
    for a in d.get("annotations") or []:
        if not isinstance(a, dict) or a.get("image_id") not in by_id:
            continue
        name = cats.get(a.get("category_id"), f"#{a.get('category_id')}")
        b = a.get("bbox")
        box = None
        if isinstance(b, list) and len(b) == 4 and all(isinstance(v, (int, float)) for v in b):
            box = [float(b[0]), float(b[1]), float(b[0] + b[2]), float(b[1] + b[3])]
        images[by_id[a["image_id"]]][1].append((name, box))
    return images, [cats[k] for k in sorted(cats)]


# ------------------------------------------------------------------------------------------ writers (tests, export)


def write_yolo(items: list[ImageBoxes], classes: list[str], folder: str | Path) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "classes.txt").write_text("\n".join(classes) + "\n")
    for it in items:
        lines = []
        for b, c in zip(it.boxes, it.labels):
            cx, cy = (b[0] + b[2]) / 2 / it.width, (b[1] + b[3]) / 2 / it.height
            w, h = (b[2] - b[0]) / it.width, (b[3] - b[1]) / it.height
            lines.append(f"{classes.index(c)} {cx:.6f} {cy:.6f} {w:.6f} {h:.6f}")
        (folder / f"{Path(it.relpath).stem}.txt").write_text("\n".join(lines) + ("\n" if lines else ""))
    return folder


def write_coco(items: list[ImageBoxes], classes: list[str], path: str | Path) -> Path:
    images, anns = [], []
    for i, it in enumerate(items, start=1):
        images.append({"id": i, "file_name": it.relpath, "width": it.width, "height": it.height})
        for b, c in zip(it.boxes, it.labels):
            x0, y0, x1, y1 = (float(v) for v in b)
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": classes.index(c) + 1,
                         "bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0), "iscrowd": 0})
    d = {"images": images, "annotations": anns,
         "categories": [{"id": k + 1, "name": c} for k, c in enumerate(classes)]}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(d))
    return Path(path)


# ------------------------------------------------------------------------------------------ scanning


def detect_format(boxes: Path) -> str:
    if boxes.is_file():
        if boxes.suffix.lower() == ".json":
            return "coco"
        raise BadInputError(f"--boxes {boxes}: give a folder of VOC .xml / YOLO .txt files or one COCO .json file")
    if not boxes.is_dir():
        raise BadInputError(f"--boxes {boxes}: no such file or directory")
    n_xml = sum(1 for _ in boxes.glob("*.xml"))
    n_txt = sum(1 for p in boxes.glob("*.txt") if p.name != "classes.txt")
    if n_xml == 0 and n_txt == 0:
        raise BadInputError(f"--boxes {boxes}: no .xml (Pascal VOC) or .txt (YOLO) annotation files")
    return "voc" if n_xml >= n_txt else "yolo"


def _images(root: Path) -> tuple[list[Path], list[str], list[str]]:
    """(image paths, relative paths, folder of each: '' for a flat folder)."""
    from ..data.dataset import collect_images

    if not root.is_dir():
        raise BadInputError(f"{root}: no such directory")
    paths, _ = collect_images([root])
    paths = sorted(p for p in paths if not any(part.startswith(".") for part in p.relative_to(root).parts))
    if not paths:
        raise BadInputError(f"{root}: no images")
    rel = [p.relative_to(root).as_posix() for p in paths]
    folders = [Path(r).parent.as_posix() if "/" in r else "" for r in rel]
    return paths, rel, folders


def _image_size(p: Path) -> tuple[int, int] | None:
    from PIL import Image

    try:
        with Image.open(p) as im:
            return im.size
    except Exception:  # noqa: BLE001 - any unreadable image is reported by the caller
        return None


def load_annotations(images: str | Path, boxes: str | Path, classes: list[str] | None = None,
                     fmt: str | None = None) -> DetData:
    """The images under ``images`` (flat or in sub-folders) with their boxes from ``boxes``.

    ``classes``: the known class names in order (a trained model's); boxes of other names are skipped.  Default:
    every name found, sorted (YOLO/COCO: the names their files declare)."""
    root = Path(images).expanduser().resolve()
    bpath = Path(boxes).expanduser()
    fmt = fmt or detect_format(bpath)
    if fmt not in FORMATS:
        raise BadInputError(f"annotation format {fmt!r}: use one of {', '.join(FORMATS)}")
    paths, rels, folders = _images(root)
    problems: list[Problem] = []
    raw: list[tuple[int, tuple[int, int], list]] = []  # (image index, size, [(name, box)])
    declared: list[str] | None = None
    by_stem: dict[str, Path] = {}
    coco = None
    if fmt in ("voc", "yolo"):
        ext = ".xml" if fmt == "voc" else ".txt"
        for p in sorted(bpath.glob(f"*{ext}")):
            if p.name != "classes.txt":
                by_stem[p.stem] = p
        if fmt == "yolo":
            declared = yolo_names(bpath)
    else:
        coco, declared = read_coco(bpath)
        coco_by_name: dict[str, str] = {}
        for fn in coco:
            coco_by_name.setdefault(Path(fn).name, fn)
    stems = Counter(Path(r).stem for r in rels)
    for i, (p, rel) in enumerate(zip(paths, rels)):
        size = _image_size(p)
        if size is None:
            problems.append(Problem(rel, "not a readable image", "skipped image"))
            continue
        try:
            if fmt == "coco":
                key = rel if rel in coco else coco_by_name.get(Path(rel).name)
                if key is None:
                    problems.append(Problem(rel, f"no entry in {bpath.name}", "skipped image"))
                    continue
                objs = coco[key][1]
            else:
                a = by_stem.get(p.stem)
                if a is None:
                    problems.append(Problem(rel, f"no annotation file {p.stem}{'.xml' if fmt == 'voc' else '.txt'} "
                                                 f"in {bpath}", "skipped image"))
                    continue
                if stems[p.stem] > 1:
                    problems.append(Problem(rel, f"{stems[p.stem]} images share the stem {p.stem!r}: its annotation "
                                                 f"is ambiguous", "skipped image"))
                    continue
                if fmt == "voc":
                    _, _, objs = read_voc(a)
                else:
                    if a.stat().st_size == 0:
                        raise AnnotationError("empty annotation file")
                    objs = read_yolo(a, size[0], size[1], declared)
        except AnnotationError as e:
            problems.append(Problem(str(by_stem.get(p.stem, rel)), str(e), "skipped image"))
            continue
        raw.append((i, size, objs))
    if declared is None:
        declared = sorted({n for _, _, objs in raw for n, b in objs if n and b is not None})
    known = list(classes) if classes else list(declared)
    if not known:
        raise BadInputError(f"{bpath}: no usable boxes (no class names found)"
                            + (f"; first problem: {problems[0].line()}" if problems else ""))
    items: list[ImageBoxes] = []
    keep_idx: list[int] = []
    for i, (w, h), objs in raw:
        rel = rels[i]
        bxs, labs = [], []
        for k, (name, box) in enumerate(objs, start=1):
            if box is None:
                problems.append(Problem(rel, f"box {k} ({name}): coordinates missing or not numbers", "skipped box"))
                continue
            if name not in known:
                problems.append(Problem(rel, f"box {k}: unknown class {name!r} (known: {', '.join(known)})",
                                        "skipped box"))
                continue
            x0, y0, x1, y1 = box
            if (x0 < -TOLERANCE or y0 < -TOLERANCE or x1 > w + TOLERANCE or y1 > h + TOLERANCE
                    or x1 < 0 or y1 < 0 or x0 > w or y0 > h):
                problems.append(Problem(rel, f"box {k} ({name}) [{x0:g}, {y0:g}, {x1:g}, {y1:g}] lies outside the "
                                             f"{w}x{h} image", "skipped box"))
                continue
            x0, y0, x1, y1 = max(0.0, x0), max(0.0, y0), min(float(w), x1), min(float(h), y1)
            if x1 - x0 < 1 or y1 - y0 < 1:
                problems.append(Problem(rel, f"box {k} ({name}) [{x0:g}, {y0:g}, {x1:g}, {y1:g}] has no area",
                                        "skipped box"))
                continue
            bxs.append([x0, y0, x1, y1])
            labs.append(name)
        if objs and not bxs:
            problems.append(Problem(rel, "none of its boxes is usable", "skipped image"))
            continue
        items.append(ImageBoxes(paths[i], rel, w, h, np.asarray(bxs, np.float32).reshape(-1, 4), labs))
        keep_idx.append(i)
    if not any(len(it.labels) for it in items):
        first = "; ".join(pr.line() for pr in problems[:3])
        raise BadInputError(f"no usable boxes in {bpath} for the images in {root}"
                            + (f" ({len(problems)} problems; first: {first})" if problems else ""))
    if any(folders[i] for i in keep_idx) and len({folders[i] for i in keep_idx}) > 1:
        names = sorted({folders[i] for i in keep_idx})
        strata = np.array([names.index(folders[i]) for i in keep_idx])
    else:
        strata = np.array([known.index(Counter(it.labels).most_common(1)[0][0]) if it.labels else len(known)
                           for it in items])
    return DetData(root, items, known, fmt, strata, problems)
