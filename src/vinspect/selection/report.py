"""``results.txt`` of ``evaluate --auto``: the outer scores, the choice of each outer split and the inner scores."""

from __future__ import annotations

from ..reporting.results import score_lines

TOP_LINES = 12  # candidates listed per split in results.txt (every one is in results.json)


def auto_text(res: dict) -> str:
    sel = res["select"]
    lines = [
        f"vinspect evaluate --auto: {res['data']}",
        f"backbone {res['backbone']}; nested selection over {res['search_space']['feature_variants']} feature "
        f"variants x {len(res['search_space']['heads'])} heads; selected on inner {sel}",
        f"images {res['n_images']} in {len(res['classes'])} classes; skipped {len(res['skipped'])}",
        f"protocol: {res['splits']} outer " + (f"{res['kfold']}-fold" if res.get("kfold") else
                                              f"stratified {round((1 - res['test_size']) * 100)}/"
                                              f"{round(res['test_size'] * 100)} splits")
        + f", seed {res['seed']}; inner: stratified 5-fold of each outer training part only (repeated on "
        f"small parts)",
        f"budget {res['budget_seconds']:.0f} s ({res['budget_per_split_seconds']:.0f} s per outer split); "
        f"reached in splits: {res['budget_reached_splits'] or 'none'}",
        "",
        *score_lines(res, " (outer test parts)"),
    ]
    lines += ["", "chosen configurations (outer splits):"]
    for label, n in res["chosen_counts"].items():
        lines.append(f"  {n:>3} x  {label}")
    for d in res["outer"]:
        key = "mean_" + sel
        lines += ["", f"outer split {d['split']}: chose {d['chosen']['label']}; outer accuracy {d['accuracy']:.4f}, "
                      f"balanced {d['balanced_accuracy']:.4f}; {d['fits']} inner fits in {d['seconds']:.1f} s"
                      + (" (budget reached" + (f"; then finished {d['finished_after_budget']} on every fold"
                                               if d.get("finished_after_budget") else "") + ")"
                         if d["budget_reached"] else "")]
        ft = d.get("finetune")
        if ft:
            lines.append(f"  fine-tuning: {ft['reason']}" + (
                f"; inner {sel} {ft[key]:.4f} against {ft['features_' + key]:.4f} for the search's choice "
                f"({ft['features_label']}) on the same folds: {'chosen' if ft['chosen'] else 'not chosen'}"
                if ft["tried"] else ""))
        lines.append(f"  inner {sel} (mean over the folds scored), best {min(TOP_LINES, len(d['candidates']))} of "
                     f"{len(d['candidates'])} candidates:")
        for r in sorted(d["candidates"], key=lambda r: (-r["n_folds"], -r[key]))[:TOP_LINES]:
            lines.append(f"    {r[key]:.4f} ({r['n_folds']} folds)  {r['label']}")
    if res["skipped"]:
        lines += ["", "skipped files:"] + [f"  {s['path']}: {s['reason']}" for s in res["skipped"]]
    lines += ["", f"extraction {res['extract_seconds']:.1f} s ({res['n_computed']} images computed); search "
                  f"{res['search_seconds']:.1f} s; total {res['total_seconds']:.1f} s"]
    return "\n".join(lines) + "\n"
