"""Reading thermogram sequences (.npy, .npz, .mat, HDF5, a folder of 8/16-bit frames) and simulated ground truth.

Every reader returns a :class:`Sequence` whose ``frames`` are (frames, height, width) float arrays; any input
that cannot be one (wrong dimensions, a single frame, NaNs, frames of different sizes...) raises
:class:`vinspect.errors.BadInputError` naming the file and the problem.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import BadInputError

MIN_FRAMES = 8
IMAGE_EXTS = {".png", ".tif", ".tiff", ".bmp", ".pgm", ".ppm", ".jpg", ".jpeg"}
SEQUENCE_KEYS = ("sequence", "frames", "data", "seq", "thermogram", "thermograms", "T", "temperature")
FPS_KEYS = ("fps", "frame_rate", "framerate", "Fs", "fs")


@dataclass
class Sequence:
    """A thermogram sequence.  ``time_s`` (seconds after the flash, one per frame) when the file stores it."""
    frames: np.ndarray
    fps: float | None = None
    time_s: np.ndarray | None = None
    source: str = ""
    meta: dict = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.frames.shape)


def _check_fps(fps, where: str) -> float | None:
    if fps is None:
        return None
    try:
        f = float(np.asarray(fps).ravel()[0])
    except (TypeError, ValueError, IndexError):
        raise BadInputError(f"{where}: frame rate {fps!r} is not a number") from None
    if not (math.isfinite(f) and f > 0):
        raise BadInputError(f"{where}: frame rate must be a positive number, got {f}")
    return f


def validate_frames(arr, where: str, frames_axis: int = 0) -> np.ndarray:
    """(frames, height, width) float64 array or BadInputError."""
    a = np.asarray(arr)
    if a.dtype == object or not (np.issubdtype(a.dtype, np.number) or a.dtype == bool) \
            or np.issubdtype(a.dtype, np.complexfloating):
        raise BadInputError(f"{where}: expected a numeric array, got dtype {a.dtype}")
    if a.ndim != 3:
        hint = " (a single image: a sequence needs several frames)" if a.ndim == 2 else ""
        raise BadInputError(f"{where}: expected a 3-D array (frames, height, width), got shape {a.shape}{hint}")
    if frames_axis not in (0, 1, 2, -1):
        raise BadInputError(f"{where}: frames axis must be 0, 1 or 2, got {frames_axis}")
    a = np.moveaxis(a, frames_axis, 0)
    n, h, w = a.shape
    if n < 2:
        raise BadInputError(f"{where}: a single frame of {h}x{w}; a thermogram sequence needs at least "
                            f"{MIN_FRAMES} frames")
    if n < MIN_FRAMES:
        raise BadInputError(f"{where}: only {n} frames; at least {MIN_FRAMES} are needed")
    if h < 4 or w < 4:
        raise BadInputError(f"{where}: frames of {h}x{w} pixels are too small (shape {a.shape}; expected "
                            f"(frames, height, width) with height and width >= 4)")
    a = a.astype(np.float64)
    bad = ~np.isfinite(a)
    if bad.any():
        first = int(np.argmax(bad.reshape(n, -1).any(axis=1)))
        raise BadInputError(f"{where}: {int(bad.sum())} NaN or infinite values (first in frame {first}); "
                            "fill or crop them before the analysis")
    return a


def _natural_key(p: Path):
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", p.name)]


def _read_folder(folder: Path) -> tuple[np.ndarray, float | None]:
    from PIL import Image, UnidentifiedImageError

    files = sorted((p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTS), key=_natural_key)
    if not files:
        raise BadInputError(f"{folder}: no image frames ({', '.join(sorted(IMAGE_EXTS))}) in this folder")
    frames, size0 = [], None
    for p in files:
        try:
            with Image.open(p) as im:
                im.load()
                mode = im.mode
                if mode in ("RGB", "RGBA", "CMYK", "P", "LA", "YCbCr"):
                    raise BadInputError(f"{p}: colour image ({mode}); thermography frames must be single-channel "
                                        "8/16-bit or float images (a false-colour rendering is not temperatures)")
                arr = np.asarray(im)
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
            raise BadInputError(f"{p}: not a readable image ({e})") from None
        if arr.ndim != 2:
            raise BadInputError(f"{p}: expected a single-channel frame, got shape {arr.shape}")
        if size0 is None:
            size0 = arr.shape
        elif arr.shape != size0:
            raise BadInputError(f"{p}: frame size {arr.shape[1]}x{arr.shape[0]} differs from the first frame "
                                f"{files[0].name} ({size0[1]}x{size0[0]}); all frames must have the same size")
        frames.append(arr.astype(np.float64))
    fps = None
    for name in ("sequence.json", "meta.json"):
        if (folder / name).is_file():
            try:
                meta = json.loads((folder / name).read_text())
            except (OSError, json.JSONDecodeError) as e:
                raise BadInputError(f"{folder / name}: not valid JSON ({e})") from None
            fps = next((meta[k] for k in FPS_KEYS if isinstance(meta, dict) and k in meta), None)
            fps = _check_fps(fps, str(folder / name))
    return np.stack(frames), fps


def _pick(named: dict, where: str, key: str | None):
    """The sequence among named arrays: ``key``, a conventional name, or the only 3-D array."""
    if key is not None:
        if key not in named:
            raise BadInputError(f"{where}: no variable {key!r} (found: {', '.join(sorted(named)) or 'none'})")
        return named[key]
    for k in SEQUENCE_KEYS:
        if k in named:
            return named[k]
    three = [k for k, v in named.items() if getattr(v, "ndim", 0) == 3]
    if len(three) == 1:
        return named[three[0]]
    if not three:
        shapes = ", ".join(f"{k} {getattr(v, 'shape', '?')}" for k, v in named.items()) or "nothing"
        raise BadInputError(f"{where}: no 3-D array (frames, height, width) found ({shapes})")
    raise BadInputError(f"{where}: several 3-D arrays ({', '.join(three)}); choose one with --key")


def _fps_from(named: dict, where: str):
    for k in FPS_KEYS:
        if k in named:
            return _check_fps(named[k], where)
    return None


def _read_mat(path: Path, key: str | None):
    """MATLAB files: v4-v7 with scipy, v7.3 (HDF5) with h5py.  Returns (array in MATLAB axis order, fps)."""
    try:
        from scipy.io import loadmat
    except ImportError:  # pragma: no cover - scipy comes with scikit-learn
        raise BadInputError(f"{path}: reading .mat files needs scipy (pip install scipy)") from None
    try:
        named = {k: v for k, v in loadmat(str(path)).items() if not k.startswith("__")}
    except NotImplementedError:  # v7.3: HDF5 inside; h5py shows the axes reversed (column-major)
        import h5py

        named = {}
        with h5py.File(path, "r") as f:
            for k, v in f.items():
                if isinstance(v, h5py.Dataset) and v.dtype.kind in "biuf":
                    named[k] = np.asarray(v[()]).T
    except (ValueError, OSError, TypeError) as e:
        raise BadInputError(f"{path}: not a readable MATLAB file ({e})") from None
    return _pick(named, str(path), key), _fps_from(named, str(path))


def _read_h5(path: Path, key: str | None):
    import h5py

    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise BadInputError(f"{path}: not a readable HDF5 file ({e})") from None
    with f:
        named = {}

        def visit(name, obj):
            if isinstance(obj, h5py.Dataset) and obj.dtype.kind in "biuf":
                named[name] = obj

        f.visititems(visit)
        ds = _pick(named, str(path), key)
        arr = np.asarray(ds[()])
        fps = None
        for holder in (ds.attrs, f.attrs):
            for k in FPS_KEYS:
                if k in holder:
                    fps = _check_fps(holder[k], f"{path}: attribute {k}")
                    break
            if fps is not None:
                break
        if fps is None:
            fps = _fps_from({k: np.asarray(v[()]) for k, v in named.items() if k in FPS_KEYS}, str(path))
        time_s = np.asarray(f["time"][()], np.float64) if "time" in f and f["time"].ndim == 1 else None
        meta = {k: (v.item() if hasattr(v, "item") else v) for k, v in f.attrs.items()}
    return arr, fps, time_s, meta


def load_sequence(path, fps: float | None = None, key: str | None = None, frames_axis: int | None = None) -> Sequence:
    """Read a sequence.  ``fps`` overrides a stored frame rate; ``key`` names the variable/dataset; ``frames_axis``
    says which axis holds time (default: 0, except .mat files where MATLAB's (rows, columns, frames) order is
    assumed, i.e. 2)."""
    p = Path(path)
    where = str(p)
    if not p.exists():
        raise BadInputError(f"{p}: no such file or folder")
    stored_fps, time_s, meta = None, None, {}
    ext = p.suffix.lower()
    if p.is_dir():
        arr, stored_fps = _read_folder(p)
        axis = 0 if frames_axis is None else frames_axis
    elif ext == ".npy":
        try:
            arr = np.load(p, allow_pickle=False)
        except (ValueError, OSError, EOFError) as e:
            raise BadInputError(f"{p}: not a readable .npy array ({e})") from None
        axis = 0 if frames_axis is None else frames_axis
    elif ext == ".npz":
        try:
            with np.load(p, allow_pickle=False) as z:
                named = {k: z[k] for k in z.files}
        except (ValueError, OSError, EOFError) as e:
            raise BadInputError(f"{p}: not a readable .npz archive ({e})") from None
        arr, stored_fps = _pick(named, where, key), _fps_from(named, where)
        axis = 0 if frames_axis is None else frames_axis
    elif ext == ".mat":
        arr, stored_fps = _read_mat(p, key)
        axis = 2 if frames_axis is None else frames_axis
    elif ext in (".h5", ".hdf5", ".hdf"):
        arr, stored_fps, time_s, meta = _read_h5(p, key)
        axis = 0 if frames_axis is None else frames_axis
    else:
        raise BadInputError(f"{p}: unsupported file type {ext or '(none)'} (.npy, .npz, .mat, .h5/.hdf5, or a folder "
                            "of image frames)")
    frames = validate_frames(arr, where, axis)
    f = _check_fps(fps, where) if fps is not None else stored_fps
    if time_s is not None and len(time_s) != frames.shape[0]:
        time_s = None
    return Sequence(frames, f, time_s, where, meta)


# ---------------------------------------------------------------------------------------- ground truth

@dataclass
class GroundTruth:
    defect_ids: np.ndarray      # (H, W) int, 0 sound, k for defect k
    depth_map: np.ndarray       # (H, W) mm, 0 where sound
    thickness_mm: float
    pixel_mm: float = 1.0
    surface_mask: np.ndarray | None = None
    holes: list = field(default_factory=list)
    alpha_z: float | None = None
    material: str | None = None

    @property
    def defect_mask(self) -> np.ndarray:
        return self.defect_ids > 0


def save_simulation(sim, path) -> Path:
    """Write a :class:`vinspect.thermo.simulate.Simulation` as HDF5: datasets ``sequence`` (frames, height,
    width), ``defect_mask``, ``defect_ids``, ``depth_map`` (mm, 0 where sound), ``surface_mask``, ``time``;
    every parameter as attributes (``parameters_json`` holds the full specification)."""
    import h5py

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    with h5py.File(tmp, "w") as f:
        n, h, w = sim.sequence.shape
        ds = f.create_dataset("sequence", data=sim.sequence, chunks=(n, min(h, 16), min(w, 16)),
                              compression="gzip", compression_opts=1, shuffle=True)
        ds.attrs["units"] = "degC (apparent)"
        f.create_dataset("defect_mask", data=sim.defect_mask.astype(np.uint8), compression="gzip")
        f.create_dataset("defect_ids", data=sim.defect_ids, compression="gzip")
        f.create_dataset("depth_map", data=sim.depth_map.astype(np.float32), compression="gzip")
        f.create_dataset("surface_mask", data=sim.surface_mask.astype(np.uint8), compression="gzip")
        f.create_dataset("time", data=sim.time_s)
        for k, v in sim.attrs().items():
            f.attrs[k] = v
    tmp.replace(path)
    return path


def load_ground_truth(path) -> GroundTruth:
    import h5py

    p = Path(path)
    if not p.is_file():
        raise BadInputError(f"{p}: no such file")
    try:
        f = h5py.File(p, "r")
    except OSError as e:
        raise BadInputError(f"{p}: not a readable HDF5 file ({e})") from None
    with f:
        if "defect_mask" not in f or "depth_map" not in f:
            raise BadInputError(f"{p}: no ground truth (datasets defect_mask and depth_map); evaluate needs a file "
                                "written by 'vinspect thermo simulate'")
        mask = np.asarray(f["defect_mask"][()]) > 0
        depth = np.asarray(f["depth_map"][()], np.float64)
        if "defect_ids" in f:
            ids = np.asarray(f["defect_ids"][()]).astype(np.int32)
        else:
            from scipy.ndimage import label

            ids, _ = label(mask)
        attrs = dict(f.attrs)
        surf = np.asarray(f["surface_mask"][()]) > 0 if "surface_mask" in f else None
    params = json.loads(attrs["parameters_json"]) if "parameters_json" in attrs else {}
    thickness = float(attrs.get("thickness_mm", params.get("thickness_mm", 0)) or 0)
    if thickness <= 0:
        thickness = float(depth.max()) * 2 if depth.max() > 0 else 1.0
    return GroundTruth(ids, depth, thickness, float(attrs.get("pixel_mm", 1.0)), surf, params.get("holes", []),
                       float(attrs["alpha_z_m2_s"]) if "alpha_z_m2_s" in attrs else None,
                       str(attrs["material"]) if "material" in attrs else None)
