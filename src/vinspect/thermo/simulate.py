"""Simulated pulsed thermography of a plate with flat-bottom holes: the ground truth for the thermo tools.

Physics (stated in docs/thermo/README-section.md as well).  A plate of thickness ``L`` (anisotropic
composite: through-thickness conductivity ``k_z``, in-plane ``k_xy``, volumetric heat capacity ``rho c``)
is heated at ``t = 0`` by a flash absorbed at the front surface ``z = 0`` (a Dirac pulse of ``Q(x, y)`` J/m^2).
The temperature rise ``T(x, y, z, t)`` above ambient obeys

    rho c dT/dt = k_xy (d2T/dx2 + d2T/dy2) + k_z d2T/dz2                       inside the material
    -k_z dT/dz = Q(x, y) delta(t) - h T                                          at the front z = 0
    dT/dn = 0                                                                    back wall, hole bottoms, hole walls

A flat-bottom hole machined from the back with its bottom at depth ``d`` (measured from the inspected
front surface) removes the material below ``z = d`` inside its footprint; the air in it is treated as an
insulator, so the hole bottom is an adiabatic boundary at ``z = d`` (the 1-D "thin plate" of thickness ``d``
above the hole) and its side walls are adiabatic too.  Heat flows laterally around the hole: that is what
blurs and weakens the signal of deep or narrow holes.

Numerics: finite volumes, one column per camera pixel, a non-uniform grid in z (0.02 mm at the surface,
growing to 0.5 mm, with a face exactly at every hole bottom), backward-Euler time steps growing
geometrically with time, and dimensional splitting (x, then y, then z: each a tridiagonal solve,
unconditionally stable).  The surface temperature at the step times is interpolated (log-log) onto the
camera frame times.  ``tests/test_thermo_simulate.py`` checks it against the closed-form 1-D solutions
(semi-infinite body, adiabatic slab).

Camera model, applied to the surface temperature: surface marks (absorptivity/emissivity patches: the
"surface defects" of the calibration plate, which change the apparent temperature but are not subsurface
defects) multiply the absorbed energy and the apparent rise; an optical blur (Gaussian, ``blur_px``); a
fixed-pattern offset (``fpn_k``); temporal noise of standard deviation ``noise_k`` (the camera's NETD);
``n_cold`` frames before the flash.  The energy ``Q(x, y)`` is not uniform (``heating_nonuniformity``:
a smooth random field, as with real flash lamps).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, replace

import numpy as np

from ..errors import BadInputError


@dataclass(frozen=True)
class Material:
    name: str
    k_z: float    # through-thickness conductivity, W/(m K)
    k_xy: float   # in-plane conductivity, W/(m K)
    rho: float    # density, kg/m^3
    c: float      # specific heat, J/(kg K)

    @property
    def rho_c(self) -> float:
        return self.rho * self.c

    @property
    def alpha_z(self) -> float:
        """Through-thickness diffusivity, m^2/s."""
        return self.k_z / self.rho_c

    @property
    def alpha_xy(self) -> float:
        return self.k_xy / self.rho_c

    @property
    def effusivity(self) -> float:
        return math.sqrt(self.k_z * self.rho_c)

    def as_dict(self) -> dict:
        return {**asdict(self), "alpha_z_m2_s": self.alpha_z, "alpha_xy_m2_s": self.alpha_xy}


# Typical laminate values (fibre volume fraction about 55-60 %, epoxy matrix).  GFRP (woven glass/epoxy):
# alpha_z = 0.20 mm^2/s, alpha_xy = 0.30 mm^2/s; CFRP: alpha_z = 0.41 mm^2/s, alpha_xy = 2.9 mm^2/s
# (quasi-isotropic lay-up).
MATERIALS = {
    "gfrp": Material("gfrp", k_z=0.40, k_xy=0.60, rho=1900.0, c=1050.0),
    "cfrp": Material("cfrp", k_z=0.70, k_xy=5.00, rho=1570.0, c=1100.0),
}


def material(name_or_material) -> Material:
    if isinstance(name_or_material, Material):
        return name_or_material
    key = str(name_or_material).lower()
    if key not in MATERIALS:
        raise BadInputError(f"unknown material {name_or_material!r} (presets: {', '.join(MATERIALS)})")
    return MATERIALS[key]


@dataclass(frozen=True)
class Hole:
    x_mm: float
    y_mm: float
    diameter_mm: float
    depth_mm: float  # from the inspected (front) surface to the hole bottom


@dataclass(frozen=True)
class SurfaceMark:
    """A patch of different absorptivity/emissivity on the front surface (ellipse), factor ~ 0.6-1.4."""
    x_mm: float
    y_mm: float
    rx_mm: float
    ry_mm: float
    factor: float


@dataclass
class PlateSpec:
    material: Material = MATERIALS["gfrp"]
    thickness_mm: float = 20.0
    width_mm: float = 180.0
    height_mm: float = 180.0
    pixel_mm: float = 1.0
    holes: list = field(default_factory=list)
    surface_marks: list = field(default_factory=list)
    fps: float = 2.0
    duration_s: float = 300.0
    n_cold: int = 20
    energy_j_m2: float = 8000.0
    h_loss: float = 10.0             # convection + radiation at the front, W/(m^2 K)
    heating_nonuniformity: float = 0.15
    blur_px: float = 0.7
    noise_k: float = 0.03            # NETD, K
    fpn_k: float = 0.05              # fixed-pattern offset, K
    ambient_c: float = 21.0

    def validate(self) -> None:
        L = self.thickness_mm
        for name in ("thickness_mm", "width_mm", "height_mm", "pixel_mm", "fps", "duration_s", "energy_j_m2"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise BadInputError(f"simulate: {name} must be a positive number, got {v!r}")
        for name in ("noise_k", "fpn_k", "blur_px", "h_loss", "heating_nonuniformity"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v >= 0):
                raise BadInputError(f"simulate: {name} must be >= 0, got {v!r}")
        if self.duration_s * self.fps < 3:
            raise BadInputError("simulate: fewer than 3 frames after the flash (raise --duration or --fps)")
        w, h = self.shape
        if w * h > 1_000_000:
            raise BadInputError(f"simulate: {w}x{h} pixels is too large (at most 1e6; raise --pixel-mm)")
        if self.n_frames_total * w * h > 400_000_000:
            raise BadInputError("simulate: the sequence would exceed 400 million values; lower --fps or --duration")
        for hole in self.holes:
            if not (0 < hole.depth_mm < L):
                raise BadInputError(f"simulate: hole depth {hole.depth_mm} mm must be inside the plate (0, {L}) mm")
            if hole.diameter_mm <= 0:
                raise BadInputError(f"simulate: hole diameter must be positive, got {hole.diameter_mm}")

    @property
    def shape(self) -> tuple[int, int]:
        """(width, height) in pixels."""
        return int(round(self.width_mm / self.pixel_mm)), int(round(self.height_mm / self.pixel_mm))

    @property
    def n_frames_total(self) -> int:
        return self.n_cold + int(round(self.duration_s * self.fps))

    def as_dict(self) -> dict:
        d = {k: v for k, v in asdict(self).items() if k not in ("material", "holes", "surface_marks")}
        d["material"] = self.material.as_dict()
        d["holes"] = [asdict(h) for h in self.holes]
        d["surface_marks"] = [asdict(m) for m in self.surface_marks]
        return d


# ------------------------------------------------------------------------------------------ presets

# The course's GFRP calibration plate: a 4 x 4 grid of flat-bottom holes (rows: diameter, columns: depth
# from the inspected face, both evenly spaced over the course's ranges), three surface marks in the bottom
# strip and sound regions around them.  20 mm thick, so defects no deeper than 10 mm are the first two columns.
COURSE_DIAMETERS_MM = (7.85, 11.9, 16.05, 20.2)
COURSE_DEPTHS_MM = (4.35, 8.13, 11.92, 15.7)


def course_plate(seed: int = 0, jitter: bool = True, **overrides) -> PlateSpec:
    """The course plate; ``seed`` draws the realisation: machining tolerances (hole position +-1 mm,
    diameter and depth +-0.1 mm), material scatter (conductivities +-3 %), flash energy (+-10 %), the
    heating pattern, the surface marks and the camera noise."""
    rng = np.random.default_rng(seed)
    j = (lambda s: rng.uniform(-s, s)) if jitter else (lambda s: 0.0)
    holes = []
    for r, dia in enumerate(COURSE_DIAMETERS_MM):
        for c, dep in enumerate(COURSE_DEPTHS_MM):
            holes.append(Hole(30.0 + 40.0 * c + j(1.0), 25.0 + 35.0 * r + j(1.0), dia + j(0.1), dep + j(0.1)))
    marks = []
    for i in range(3):
        marks.append(SurfaceMark(35.0 + 55.0 * i + j(8.0), 163.0 + j(2.0), 6.0 + abs(j(3.0)), 4.0 + abs(j(2.0)),
                                 float(rng.choice([0.7, 1.3])) + j(0.1)))
    mat = MATERIALS["gfrp"]
    if jitter:
        f = 1.0 + j(0.03)
        mat = replace(mat, k_z=mat.k_z * f, k_xy=mat.k_xy * (1.0 + j(0.03)))
    spec = PlateSpec(material=mat, thickness_mm=20.0, width_mm=180.0, height_mm=180.0, holes=holes,
                     surface_marks=marks, energy_j_m2=8000.0 * (1.0 + j(0.1)))
    for k, v in overrides.items():
        if v is not None:
            setattr(spec, k, material(v) if k == "material" else v)
    return spec


def random_plate(seed: int, material_name="gfrp", thickness_mm: float = 20.0, width_mm: float = 160.0,
                 height_mm: float = 160.0, n_holes: tuple[int, int] = (8, 12),
                 diameter_mm: tuple[float, float] = (7.0, 22.0), depth_frac: tuple[float, float] = (0.15, 0.85),
                 **overrides) -> PlateSpec:
    """A plate with randomly placed holes of random diameter and depth, random surface marks, random camera
    noise, blur and flash energy: training and calibration data that is not the course plate."""
    rng = np.random.default_rng(seed)
    L = thickness_mm
    holes: list[Hole] = []
    target = int(rng.integers(n_holes[0], n_holes[1] + 1))
    tries = 0
    while len(holes) < target and tries < 5000:
        tries += 1
        dia = float(rng.uniform(*diameter_mm))
        r = dia / 2
        x, y = float(rng.uniform(r + 8, width_mm - r - 8)), float(rng.uniform(r + 8, height_mm - r - 8))
        if all(math.hypot(x - h.x_mm, y - h.y_mm) > r + h.diameter_mm / 2 + 12 for h in holes):
            holes.append(Hole(x, y, dia, float(rng.uniform(*depth_frac)) * L))
    marks = []
    for _ in range(int(rng.integers(1, 4))):
        marks.append(SurfaceMark(float(rng.uniform(10, width_mm - 10)), float(rng.uniform(10, height_mm - 10)),
                                 float(rng.uniform(2, 8)), float(rng.uniform(2, 8)),
                                 float(rng.uniform(0.6, 0.85) if rng.random() < 0.5 else rng.uniform(1.15, 1.4))))
    mat = material(material_name)
    mat = replace(mat, k_z=mat.k_z * rng.uniform(0.97, 1.03), k_xy=mat.k_xy * rng.uniform(0.97, 1.03))
    spec = PlateSpec(material=mat, thickness_mm=L, width_mm=width_mm, height_mm=height_mm, holes=holes,
                     surface_marks=marks, energy_j_m2=float(rng.uniform(6000, 10000)),
                     heating_nonuniformity=float(rng.uniform(0.05, 0.25)), blur_px=float(rng.uniform(0.4, 1.0)),
                     noise_k=float(rng.uniform(0.02, 0.05)), fpn_k=float(rng.uniform(0.02, 0.08)))
    for k, v in overrides.items():
        if v is not None:
            setattr(spec, k, material(v) if k == "material" else v)
    return spec


# ------------------------------------------------------------------------------------------ geometry

def _grid(spec: PlateSpec):
    w, h = spec.shape
    p = spec.pixel_mm
    xs = (np.arange(w) + 0.5) * p
    ys = (np.arange(h) + 0.5) * p
    return np.meshgrid(xs, ys)  # X[y, x], Y[y, x] in mm


def ground_truth(spec: PlateSpec):
    """(defect_ids int16: 0 sound, i+1 for hole i; depth_map mm; surface_mask bool) on the camera grid."""
    X, Y = _grid(spec)
    ids = np.zeros(X.shape, np.int16)
    depth = np.zeros(X.shape, np.float32)
    for i, hole in enumerate(spec.holes):
        inside = (X - hole.x_mm) ** 2 + (Y - hole.y_mm) ** 2 <= (hole.diameter_mm / 2) ** 2
        ids[inside] = i + 1
        depth[inside] = hole.depth_mm
    surf = np.zeros(X.shape, bool)
    for m in spec.surface_marks:
        surf |= ((X - m.x_mm) / m.rx_mm) ** 2 + ((Y - m.y_mm) / m.ry_mm) ** 2 <= 1
    return ids, depth, surf


def _z_faces(L: float, depths, dz0: float = 2e-5, growth: float = 1.3, dzmax: float = 8e-4) -> np.ndarray:
    faces = [0.0]
    dz = dz0
    while faces[-1] + dz < L - 0.5 * dz:
        faces.append(faces[-1] + dz)
        dz = min(dz * growth, dzmax)
    faces.append(L)
    faces = np.array(faces)
    for d in sorted(set(float(x) for x in depths)):
        i = int(np.argmin(np.abs(faces - d)))
        spacing = np.diff(faces)
        local = spacing[min(i, len(spacing) - 1)]
        if abs(faces[i] - d) < 0.35 * local and 0 < i < len(faces) - 1:
            faces[i] = d
        else:
            faces = np.sort(np.append(faces, d))
    return faces


def _heating_field(rng, shape, amplitude: float) -> np.ndarray:
    """Smooth multiplicative field 1 + amplitude * (tilt + radial fall-off + low-frequency ripple)."""
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w]
    u, v = xx / max(w - 1, 1) - 0.5, yy / max(h - 1, 1) - 0.5
    ang = rng.uniform(0, 2 * np.pi)
    cx, cy = rng.uniform(-0.2, 0.2, 2)
    f = 0.6 * (np.cos(ang) * u + np.sin(ang) * v) * 2
    f += -1.0 * ((u - cx) ** 2 + (v - cy) ** 2) * 2
    f += 0.3 * np.sin(2 * np.pi * (rng.uniform(0.5, 1.5) * u + rng.uniform(0, 1))) * np.sin(
        2 * np.pi * (rng.uniform(0.5, 1.5) * v + rng.uniform(0, 1)))
    f -= f.mean()
    f /= max(np.abs(f).max(), 1e-9)
    return 1.0 + amplitude * f


# ------------------------------------------------------------------------------------------ solver

class _Tridiag:
    """Factorised tridiagonal systems along the leading axis of an array (Thomas algorithm, vectorised over
    the other axes): ``lower[i] x[i-1] + diag[i] x[i] + upper[i] x[i+1] = rhs[i]``."""

    def __init__(self, lower: np.ndarray, diag: np.ndarray, upper: np.ndarray):
        n = diag.shape[0]
        self.a = lower
        self.m = np.empty_like(diag)
        self.cp = np.empty_like(diag)
        self.m[0] = 1.0 / diag[0]
        self.cp[0] = upper[0] * self.m[0]
        for i in range(1, n):
            self.m[i] = 1.0 / (diag[i] - lower[i] * self.cp[i - 1])
            self.cp[i] = upper[i] * self.m[i]

    def solve(self, d: np.ndarray) -> np.ndarray:
        """Solve in place (``d`` is overwritten with the solution)."""
        n = d.shape[0]
        d[0] *= self.m[0]
        for i in range(1, n):
            d[i] -= self.a[i] * d[i - 1]
            d[i] *= self.m[i]
        for i in range(n - 2, -1, -1):
            d[i] -= self.cp[i] * d[i + 1]
        return d


def _bonds(solid: np.ndarray) -> np.ndarray:
    """Along the leading axis: 1 where a cell and its successor are both material (last cell: 0)."""
    bond = np.zeros(solid.shape, np.float32)
    bond[:-1] = solid[:-1] & solid[1:]
    return bond


def _factor(coef_face: np.ndarray, bond: np.ndarray, cap_lo: np.ndarray, cap_hi: np.ndarray,
            extra_diag=0.0) -> _Tridiag:
    """Backward Euler for diffusion along the leading axis.  ``coef_face[i]``: dt * conductance of the face
    between cells i and i+1 (already divided by the heat capacity per area); ``cap_lo[i]``/``cap_hi[i]``:
    the thickness of cell i and cell i+1 (the flux through the face is divided by the receiving cell's size)."""
    f = coef_face * bond
    up = np.zeros(bond.shape)
    low = np.zeros(bond.shape)
    up[:-1] = -(f / cap_lo)[:-1]
    low[1:] = -(f / cap_hi)[:-1]
    diag = 1.0 - up - low + extra_diag
    # factorised in double precision, applied in single (the state is float32: half the memory traffic)
    tri = _Tridiag(low, diag, up)
    tri.a, tri.m, tri.cp = (x.astype(np.float32) for x in (tri.a, tri.m, tri.cp))
    return tri


def surface_response(spec: PlateSpec, times: np.ndarray, q_map: np.ndarray, dt0: float = 2e-3,
                     step_ratio: float = 0.02, ladder: float = 1.1, progress: bool = False) -> np.ndarray:
    """Temperature rise of the front surface (K) at ``times`` (s, > 0) for absorbed energy ``q_map`` (J/m^2).

    Time steps follow ``dt ~ step_ratio * t`` (at least ``dt0``), taken from a geometric ladder of values
    (factor ``ladder``) so that each factorisation serves several steps."""
    from tqdm.auto import tqdm

    mat = spec.material
    L = spec.thickness_mm * 1e-3
    dx = spec.pixel_mm * 1e-3
    ids, depth_mm, _ = ground_truth(spec)
    thick = np.where(ids > 0, depth_mm * 1e-3, L)
    faces = _z_faces(L, [h.depth_mm * 1e-3 for h in spec.holes])
    dz = np.diff(faces)
    zc = 0.5 * (faces[:-1] + faces[1:])
    solid = zc[:, None, None] < thick[None, :, :] - 1e-9       # (z, y, x)
    nz = len(dz)
    hgt, wid = thick.shape

    # three layouts, each with its diffusion axis leading and contiguous
    bond_z = _bonds(solid)
    bond_y = np.ascontiguousarray(_bonds(np.ascontiguousarray(solid.transpose(1, 0, 2))))   # (y, z, x)
    bond_x = np.ascontiguousarray(_bonds(np.ascontiguousarray(solid.transpose(2, 0, 1))))   # (x, z, y)
    g_face = np.append(mat.alpha_z / (0.5 * (dz[:-1] + dz[1:])), 0.0)[:, None, None]       # m/s
    dz_lo = dz[:, None, None]
    dz_hi = np.append(dz[1:], 1.0)[:, None, None]
    loss = np.zeros((nz, 1, 1))
    loss[0] = spec.h_loss / (mat.rho_c * dz[0])
    lat = mat.alpha_xy / dx ** 2                               # 1/s

    T = np.zeros((nz, hgt, wid), np.float32)
    T[0] = q_map / (mat.rho_c * dz[0])
    t_end = float(np.max(times)) * 1.0001
    t, t_lat = 0.0, 0.0
    snap_t, snap_T = [], []
    cache: dict = {}

    def factors(kind, dt):
        key = (kind, dt)
        if key not in cache:
            for k in [k for k in cache if k[0] == kind]:
                del cache[k]
            if kind == "z":
                cache[key] = _factor(dt * g_face, bond_z, dz_lo, dz_hi, dt * loss)
            else:
                bond = bond_y if kind == "y" else bond_x
                cache[key] = _factor(np.full((1, 1, 1), dt * lat), bond, np.ones((1, 1, 1)), np.ones((1, 1, 1)))
        return cache[key]

    def step(t):
        target = max(dt0, step_ratio * t)
        return dt0 * ladder ** math.floor(math.log(target / dt0) / math.log(ladder))

    dts, tt = [], t
    while tt < t_end:                    # the time steps, known in advance: the progress bar has its true length
        dts.append(step(tt))
        tt += dts[-1]
    for dt in tqdm(dts, desc="simulate", unit="step", disable=not progress, leave=False):
        t += dt
        # in-plane diffusion (skipped while negligible: it is applied once the pending time matters)
        pending = t - t_lat
        if pending * lat >= 0.02 or t >= t_end:
            dtl = dt if pending <= dt * 1.0001 else pending
            fy = factors("y", dtl) if dtl == dt else _factor(np.full((1, 1, 1), dtl * lat), bond_y,
                                                             np.ones((1, 1, 1)), np.ones((1, 1, 1)))
            fx = factors("x", dtl) if dtl == dt else _factor(np.full((1, 1, 1), dtl * lat), bond_x,
                                                             np.ones((1, 1, 1)), np.ones((1, 1, 1)))
            Ty = np.ascontiguousarray(T.transpose(1, 0, 2))
            fy.solve(Ty)
            Tx = np.ascontiguousarray(Ty.transpose(2, 1, 0))     # (x, z, y)
            fx.solve(Tx)
            T = np.ascontiguousarray(Tx.transpose(1, 2, 0))      # back to (z, y, x)
            t_lat = t
        factors("z", dt).solve(T)
        snap_t.append(t)
        snap_T.append(T[0].astype(np.float64))
    st = np.array(snap_t)
    lt = np.log(st)
    lv = np.log(np.maximum(np.stack(snap_T), 1e-12))           # (steps, h, w)
    out = np.empty((len(times), hgt, wid))
    for i, tt in enumerate(times):
        j = int(np.clip(np.searchsorted(st, tt), 1, len(st) - 1))
        wgt = (math.log(tt) - lt[j - 1]) / (lt[j] - lt[j - 1])
        out[i] = np.exp(lv[j - 1] + wgt * (lv[j] - lv[j - 1]))
    return out


@dataclass
class Simulation:
    sequence: np.ndarray      # (frames, height, width) float32, apparent temperature in deg C
    time_s: np.ndarray        # (frames,) seconds after the flash (cold frames negative)
    defect_ids: np.ndarray    # (height, width) int16, 0 sound, i+1 hole i
    depth_map: np.ndarray     # (height, width) float32, mm, 0 where sound
    surface_mask: np.ndarray  # (height, width) bool, surface marks (not subsurface defects)
    spec: PlateSpec
    seed: int

    @property
    def defect_mask(self) -> np.ndarray:
        return self.defect_ids > 0

    @property
    def fps(self) -> float:
        return self.spec.fps

    def attrs(self) -> dict:
        return {"fps": self.spec.fps, "seed": self.seed, "thickness_mm": self.spec.thickness_mm,
                "pixel_mm": self.spec.pixel_mm, "material": self.spec.material.name,
                "alpha_z_m2_s": self.spec.material.alpha_z, "alpha_xy_m2_s": self.spec.material.alpha_xy,
                "n_cold_frames": self.spec.n_cold, "flash_frame": self.spec.n_cold,
                "noise_k": self.spec.noise_k, "blur_px": self.spec.blur_px,
                "parameters_json": json.dumps(self.spec.as_dict())}


def simulate(spec: PlateSpec, seed: int = 0, progress: bool = False) -> Simulation:
    """Simulate the sequence of ``spec``; ``seed`` draws the heating pattern and the camera noise."""
    from scipy.ndimage import gaussian_filter

    spec.validate()
    rng = np.random.default_rng([seed, 7])
    w, h = spec.shape
    ids, depth, surf = ground_truth(spec)
    X, Y = _grid(spec)
    factor = np.ones((h, w))
    for m in spec.surface_marks:
        inside = ((X - m.x_mm) / m.rx_mm) ** 2 + ((Y - m.y_mm) / m.ry_mm) ** 2 <= 1
        factor[inside] = m.factor
    q = spec.energy_j_m2 * _heating_field(rng, (h, w), spec.heating_nonuniformity) * factor
    n_post = int(round(spec.duration_s * spec.fps))
    t_post = np.arange(1, n_post + 1) / spec.fps
    rise = surface_response(spec, t_post, q, progress=progress)
    rise *= factor[None]                       # emissivity of the marks scales the apparent rise too
    if spec.blur_px > 0:
        rise = gaussian_filter(rise, sigma=(0, spec.blur_px, spec.blur_px), mode="nearest")
    cold = np.zeros((spec.n_cold, h, w))
    seq = np.concatenate([cold, rise], axis=0)
    # the apparent ambient level differs a little on the marks (reflected surroundings), fixed pattern, noise
    seq += spec.ambient_c + 0.2 * (factor - 1.0)[None]
    seq += rng.normal(0, spec.fpn_k, (h, w))[None] if spec.fpn_k > 0 else 0
    if spec.noise_k > 0:
        seq += rng.normal(0, spec.noise_k, seq.shape)
    time = np.concatenate([-(np.arange(spec.n_cold, 0, -1)) / spec.fps, t_post])
    return Simulation(seq.astype(np.float32), time, ids, depth, surf, spec, seed)
