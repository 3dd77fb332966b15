"""Images of the thermo pipeline (matplotlib, Agg backend): processed sequences, defect map, contrast curves,
evaluation against ground truth."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path, hide_ticks=()) -> Path:
    """Tight layout, write the PNG, free the figure; ``hide_ticks``: image axes without ticks."""
    import matplotlib.pyplot as plt

    for ax in hide_ticks:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


def _tunit(proc) -> str:
    return "s" if proc.prep.time_unit == "s" else "frames"


def _grid(images, titles, path, suptitle, cmap="inferno", symmetric=False, cols=3):
    plt = _plt()
    n = len(images)
    rows = math.ceil(n / cols)
    h, w = images[0].shape
    fw = 3.4 * cols
    fh = rows * 3.4 * h / w + 0.7
    fig, axes = plt.subplots(rows, cols, figsize=(fw, fh), dpi=100, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, img, title in zip(axes.flat, images, titles):
        lo, hi = np.percentile(img, [1, 99])
        if symmetric:
            med = np.median(img)
            s = max(abs(hi - med), abs(med - lo), 1e-12)
            lo, hi = med - s, med + s
        im = ax.imshow(img, cmap=cmap, vmin=lo, vmax=hi if hi > lo else lo + 1e-9)
        ax.set_title(title, fontsize=9)
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02).ax.tick_params(labelsize=7)
    fig.suptitle(suptitle, fontsize=10)
    return _save(fig, path)


def _pick(times, k=6):
    return np.unique(np.round(np.linspace(len(times) // 8, len(times) - 1, k)).astype(int))


def processed_images(proc, out: Path) -> list[Path]:
    out = Path(out)
    prep, ti, tu = proc.prep, proc.ti, _tunit(proc)
    paths = []
    idx = np.unique(np.round(np.exp(np.linspace(0, math.log(len(prep.time)), 7)[1:])).astype(int) - 1)
    paths.append(_grid([prep.rise[i] for i in idx], [f"t = {prep.time[i]:.3g} {tu}" for i in idx],
                       out / "cold_subtracted.png", "Temperature rise after the flash (cold image subtracted)"))
    k = _pick(ti.times)
    paths.append(_grid([ti.log_contrast[i] for i in k], [f"t = {ti.times[i]:.3g} {tu}" for i in k],
                       out / "normalised_contrast.png",
                       "Normalised contrast: ln T - ln T(first frame) - spatial median (TSR fit)", cmap="magma"))
    paths.append(_grid([ti.d1[i] for i in k], [f"t = {ti.times[i]:.3g} {tu}" for i in k], out / "tsr_d1.png",
                       "TSR first derivative d ln T / d ln t", cmap="RdBu_r", symmetric=True))
    paths.append(_grid([ti.d2[i] for i in k], [f"t = {ti.times[i]:.3g} {tu}" for i in k], out / "tsr_d2.png",
                       "TSR second derivative d2 ln T / d(ln t)2", cmap="RdBu_r", symmetric=True))
    p = proc.pct
    paths.append(_grid(list(p.eofs), [f"EOF {i + 1} ({100 * e:.3g} % of variance)" for i, e in enumerate(p.explained)],
                       out / "pct_eofs.png", "Principal component thermography: empirical orthogonal functions",
                       cmap="viridis"))
    q = proc.ppt
    fu = "Hz" if tu == "s" else "1/frame"
    paths.append(_grid(list(q.phase[:6]), [f"f = {f:.3g} {fu}" for f in q.freqs[:6]], out / "ppt_phase.png",
                       "Pulsed phase thermography: phase images (rad)", cmap="twilight_shifted"))
    return paths


_COLORS = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#bfef45", "#fabed4",
           "#469990", "#dcbeff", "#9a6324", "#800000", "#aaffc3", "#808000", "#000075"]


def defect_map(proc, det, defects, marks, path) -> Path:
    plt = _plt()
    h, w = det.labels.shape
    fig, axes = plt.subplots(1, 2, figsize=(11, 5.2 * h / w + 0.8), dpi=110)
    lo, hi = np.percentile(det.score, [1, 99.5])
    im = axes[0].imshow(det.score, cmap="inferno", vmin=lo, vmax=hi)
    fig.colorbar(im, ax=axes[0], fraction=0.046, pad=0.02)
    label = "probability" if det.method in ("cnn1d", "lstm") else "robust z-score"
    axes[0].set_title(f"{det.method} score map ({label})", fontsize=10)
    from scipy import ndimage as ndi

    rise = proc.prep.rise
    k = max(1, len(rise) // 4)
    bg = ndi.gaussian_filter(rise[-k:].mean(axis=0) / rise[: max(1, min(3, k))].mean(axis=0), 1.0)
    lo, hi = np.percentile(bg, [1, 99.5])
    axes[1].imshow(bg, cmap="gray", vmin=lo, vmax=hi)
    for i, d in enumerate(defects):
        m = det.labels == d["_label"]
        col = _COLORS[i % len(_COLORS)]
        axes[1].contourf(m.astype(float), levels=[0.5, 1.5], colors=[col], alpha=0.35)
        axes[1].contour(m.astype(float), levels=[0.5], colors=[col], linewidths=1.2)
        x, y = d["centroid_xy"]
        txt = f"{d['id']}" + (f"\n{d['estimated_depth_mm']:.1f} mm" if d.get("estimated_depth_mm") else "")
        axes[1].text(x, y, txt, color="white", fontsize=7, ha="center", va="center", fontweight="bold")
    for d in marks:
        m = det.labels == d["_label"]
        axes[1].contour(m.astype(float), levels=[0.5], colors=["cyan"], linewidths=1.0, linestyles="dashed")
    axes[1].set_title(f"{len(defects)} defects (id, depth)"
                      + (f", {len(marks)} surface marks (dashed)" if marks else "")
                      + "\non the late frames / the first ones", fontsize=9)
    return _save(fig, path, hide_ticks=axes)


def contrast_curves(proc, labels, sigs, defects, marks, path) -> Path:
    """Measured rise of each defect and of the sound area (log-log), the contrast against sound, and its
    slope in log time, whose peak gives the depth."""
    plt = _plt()
    from .depth import background_mask

    tu = _tunit(proc)
    prep = proc.prep
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.4), dpi=100)
    sound = background_mask(labels)
    axes[0].loglog(prep.time, np.median(prep.rise[:, sound], axis=1), color="k", lw=2, label="sound (median)")
    for i, d in enumerate(defects):
        s = sigs[d["_label"]]
        col = _COLORS[i % len(_COLORS)]
        lab = f"{d['id']}" + (f" ({d['estimated_depth_mm']:.1f} mm)" if d.get("estimated_depth_mm") else "")
        axes[0].loglog(prep.time, prep.rise[:, labels == d["_label"]].mean(axis=1), color=col, lw=0.8, label=lab)
        axes[1].semilogx(s.times, np.expm1(s.log_contrast), color=col, label=lab)
        axes[2].semilogx(s.times, s.d1, color=col, label=lab)
        if s.t_slope:
            axes[2].axvline(s.t_slope, color=col, lw=0.6, ls=":")
    for d in marks:
        s = sigs[d["_label"]]
        axes[1].semilogx(s.times, np.expm1(s.log_contrast), color="gray", ls="--", lw=0.8)
    axes[0].set_title("measured temperature rise (log-log)", fontsize=10)
    axes[0].set_xlabel(f"time after the flash ({tu})")
    axes[1].axhline(0, color="k", lw=0.8)
    axes[1].set_title("contrast against sound: T / T_sound - 1" + ("\n(surface marks dashed)" if marks else ""),
                      fontsize=10)
    axes[1].set_xlabel(f"time ({tu})")
    axes[2].axhline(0, color="k", lw=0.8)
    axes[2].set_title("contrast slope d ln(T/T_sound) / d ln t\n(dotted: its peak, which gives the depth)",
                      fontsize=10)
    axes[2].set_xlabel(f"time ({tu})")
    for ax in axes:
        ax.grid(alpha=0.3, which="both")
    if defects:
        axes[0].legend(fontsize=6, ncol=2, title="defect (depth)", title_fontsize=6)
    else:
        axes[0].legend(fontsize=7)
    return _save(fig, path)


def evaluation_figure(proc, det, gt, res, path) -> Path:
    plt = _plt()
    pred = det.defect_map
    ids = gt.defect_ids
    scope = {r["id"] for r in res["per_defect"] if r["in_scope"]}
    in_scope = np.isin(ids, list(scope))
    out_scope = (ids > 0) & ~in_scope
    rgb = np.ones(ids.shape + (3,)) * 0.15
    rgb[pred & in_scope] = (0.2, 0.8, 0.2)      # true positive
    rgb[~pred & in_scope] = (0.9, 0.2, 0.2)     # missed
    rgb[pred & (ids == 0)] = (1.0, 0.8, 0.1)    # false positive (or ignored margin)
    rgb[pred & out_scope] = (0.3, 0.5, 1.0)     # deeper defects: not scored
    fig, axes = plt.subplots(1, 2, figsize=(11, 5.4), dpi=110)
    lo, hi = np.percentile(det.score, [1, 99.5])
    axes[0].imshow(det.score, cmap="inferno", vmin=lo, vmax=hi)
    axes[0].contour(in_scope.astype(float), levels=[0.5], colors=["lime"], linewidths=0.8)
    axes[0].contour(out_scope.astype(float), levels=[0.5], colors=["cyan"], linewidths=0.6, linestyles="dashed")
    axes[0].set_title(f"{det.method} score; ground truth: in scope (green), deeper (cyan)", fontsize=9)
    axes[1].imshow(rgb)
    for r in res["per_defect"]:
        if r["in_scope"] and r["estimated_depth_mm"] is not None:
            ys, xs = np.nonzero(ids == r["id"])
            axes[1].text(xs.mean(), ys.mean(), f"{r['estimated_depth_mm']:.1f}\n({r['depth_mm']:.1f})",
                         fontsize=6, ha="center", va="center", color="black")
    err = res["depth_mean_relative_error"]
    axes[1].set_title(f"F1 {res['pixel_f1']:.3f}, found {res['defects_found']}/{res['defects_total']}, depth error "
                      f"{'-' if err is None else f'{100 * err:.1f} %'}\ngreen TP, red missed, yellow FP, blue deeper "
                      "(not scored); est. (true) depth mm", fontsize=9)
    return _save(fig, path, hide_ticks=axes)


def methods_overview(proc, path, dpi: int = 80) -> Path:
    """One image per processing method (for the README): normalised contrast late, TSR d2 mid-sequence,
    PCT EOF 2, PPT phase at the lowest frequency."""
    plt = _plt()
    ti, tu = proc.ti, _tunit(proc)
    i_lc = int(0.85 * (len(ti.times) - 1))
    i_d2 = int(0.6 * (len(ti.times) - 1))
    fu = "Hz" if tu == "s" else "1/frame"
    panels = [(ti.log_contrast[i_lc], f"normalised contrast, t = {ti.times[i_lc]:.3g} {tu}", "magma", False),
              (ti.d2[i_d2], f"TSR d2 ln T / d(ln t)2, t = {ti.times[i_d2]:.3g} {tu}", "RdBu_r", True),
              (proc.pct.eofs[1], "PCT: EOF 2", "viridis", False),
              (proc.ppt.phase[0], f"PPT: phase at {proc.ppt.freqs[0]:.3g} {fu}", "twilight_shifted", False)]
    h, w = panels[0][0].shape
    fig, axes = plt.subplots(1, 4, figsize=(14, 3.6 * h / w + 0.5), dpi=dpi)
    for ax, (img, title, cmap, sym) in zip(axes, panels):
        lo, hi = np.percentile(img, [1, 99])
        if sym:
            med = np.median(img)
            s = max(abs(hi - med), abs(med - lo), 1e-12)
            lo, hi = med - s, med + s
        ax.imshow(img, cmap=cmap, vmin=lo, vmax=hi if hi > lo else lo + 1e-9)
        ax.set_title(title, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    return _save(fig, path)
