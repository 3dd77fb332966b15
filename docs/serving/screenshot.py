"""Make docs/serving/operator.png: the operator page of a real service, in headless Chromium.

    python docs/serving/screenshot.py [--model DIR] [--out docs/serving/operator.png]

Without ``--model`` it trains the insert-wear intact/damaged model (low+medium vs high flank wear, the
default backbone, letterboxed crops) on ../shared/datasets/insert-wear/images, starts the service on a
loopback port with a temporary SQLite log, sends a few real crops through the API from two stations,
uploads one more through the page and takes the screenshot.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
WEAR = ROOT.parent / "shared" / "datasets" / "insert-wear" / "images"
sys.path.insert(0, str(ROOT / "tests"))  # serving_support.LiveServer


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model")
    ap.add_argument("--out", default=str(ROOT / "docs" / "serving" / "operator.png"))
    ap.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TQDM_DISABLE", "1")
    import httpx
    from playwright.sync_api import expect, sync_playwright
    from serving_support import LiveServer

    from vinspect.features.extract import Extractor
    from vinspect.pipeline import train
    from vinspect.serving.app import Service, create_app

    tmp = Path(tempfile.mkdtemp(prefix="vinspect-shot-"))
    try:
        model = Path(args.model) if args.model else tmp / "insert-wear"
        if not args.model:
            train(WEAR, model, extractor=Extractor(resize="letterbox"), classes=["intact=low,medium", "damaged=high"],
                  eval_splits=5, progress=False, cache_dir=tmp / "cache")
        svc = Service(model, db=f"sqlite:///{tmp / 'log.sqlite3'}")
        low = sorted((WEAR / "low").glob("*.png"))
        med = sorted((WEAR / "medium").glob("*.png"))
        high = sorted((WEAR / "high").glob("*.png"))
        sends = [(low[3], "mill-1"), (med[10], "mill-1"), (high[2], "mill-2"), (med[40], "mill-2"),
                 (low[12], "mill-1"), (high[9], "mill-1"), (med[77], "mill-2"), (low[20], "mill-2")]
        with LiveServer(create_app(svc)) as srv:
            for i, (p, station) in enumerate(sends):
                r = httpx.post(srv.url + "/v1/inspect", files={"file": (p.name, p.read_bytes(), "image/png")},
                               data={"station": station, "part_id": f"INS-{4100 + i}"}, timeout=60)
                r.raise_for_status()
            last = next(p for p in high[15:] if svc.inference.predict(
                svc.inference.prepare(p.read_bytes()).pixels).label == "damaged")
            with sync_playwright() as pw:
                b = pw.chromium.launch(executable_path=args.chromium, headless=True,
                                       args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
                page = b.new_page(viewport={"width": 1360, "height": 860})
                page.goto(srv.url + "/")
                expect(page.locator("#model")).to_contain_text("intact", timeout=30000)
                page.fill("#station", "mill-2")
                page.fill("#part", "INS-4108")
                page.set_input_files("#file", str(last))
                expect(page.locator("#verdict")).to_have_text("damaged", timeout=60000)
                expect(page.locator("#heat")).to_have_attribute("data-state", "loaded", timeout=60000)
                expect(page.locator("#recent li")).to_have_count(9, timeout=30000)
                page.wait_for_timeout(500)
                page.screenshot(path=args.out)
                b.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"-> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
