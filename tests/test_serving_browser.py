"""The operator page in headless Chromium (Debian's /usr/bin/chromium through Playwright): upload images,
see the verdicts and the heatmap, find them in the recent list, filter the damaged parts; a screenshot is
saved (to $VINSPECT_SCREENSHOT as well, when set)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the serving dependencies (fastapi, uvicorn, sqlalchemy) are not installed")

from serving_support import LiveServer, shared_inference, small_model  # noqa: E402

CHROMIUM = os.environ.get("VINSPECT_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    if not Path(CHROMIUM).is_file():
        pytest.skip(f"Chromium not found at {CHROMIUM}: install Debian's chromium (scripts/ci-system-deps.sh)")
    with sync_api.sync_playwright() as pw:
        try:
            b = pw.chromium.launch(executable_path=CHROMIUM, headless=True,
                                   args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
        except Exception as e:  # noqa: BLE001 - a browser that cannot start is a skip with its reason
            pytest.skip(f"Chromium at {CHROMIUM} does not start: {str(e).splitlines()[0]}")
        yield b
        b.close()


def test_operator_page_upload_verdict_heatmap_recent_list(browser, neu_small, tmp_path):
    from playwright.sync_api import expect

    from vinspect.serving.app import Service, create_app

    model = small_model(neu_small)
    inference = shared_inference(model)
    # crazing counts as "ok" here, so the page shows both colours and the damaged filter has work to do
    svc = Service(model, db=f"sqlite:///{tmp_path / 'page.sqlite3'}", inference=inference, ok_classes=["crazing"])
    crazing = sorted((neu_small / "crazing").glob("*.jpg"))[7]
    scratches = sorted((neu_small / "scratches").glob("*.jpg"))[7]
    want = {p: inference.predict(inference.prepare(p.read_bytes()).pixels).label for p in (crazing, scratches)}
    assert want[crazing] == "crazing" and want[scratches] == "scratches"  # the test's premise on real images

    with LiveServer(create_app(svc)) as srv:
        page = browser.new_page(viewport={"width": 1360, "height": 900})
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("response", lambda r: errors.append(f"{r.status} {r.url}") if r.status >= 400 else None)
        page.goto(srv.url + "/")
        expect(page.locator("#model")).to_contain_text("crazing", timeout=15000)
        page.fill("#station", "mill-3")

        for path in (crazing, scratches):
            page.set_input_files("#file", str(path))
            expect(page.locator("#verdict")).to_have_text(want[path], timeout=30000)
            expect(page.locator("#heat")).to_have_attribute("data-state", "loaded", timeout=30000)
            assert page.evaluate("document.getElementById('heat').naturalWidth") > 0
            vid = page.get_attribute("#verdict", "data-id")
            expect(page.locator(f"#recent li[data-id='{vid}']")).to_have_count(1, timeout=15000)
            cls = page.get_attribute("#verdict", "class")
            assert ("ok" in cls.split()) == (want[path] == "crazing"), cls  # green for ok, red for damaged
            assert page.evaluate("document.getElementById('img').naturalWidth") > 0

        rec = svc.db.list(limit=5)[0]
        assert [r["label"] for r in rec] == [want[scratches], want[crazing]]
        assert all(r["station"] == "mill-3" for r in rec)
        # today's counts per class
        expect(page.locator("#counts tr[data-label='scratches'] td.n")).to_have_text("1", timeout=15000)
        expect(page.locator("#counts tr[data-label='crazing'] td.n")).to_have_text("1")
        expect(page.locator("#counts tr[data-label='_damaged'] td.n")).to_have_text("1")
        # the heatmap image is the service's heatmap
        assert page.get_attribute("#heat", "src").endswith("/heatmap.png")

        page.screenshot(path=str(tmp_path / "operator.png"), full_page=True)
        if os.environ.get("VINSPECT_SCREENSHOT"):
            shutil.copy(tmp_path / "operator.png", os.environ["VINSPECT_SCREENSHOT"])

        page.check("#damaged-only")
        expect(page.locator("#recent li")).to_have_count(1, timeout=15000)
        expect(page.locator("#recent li")).to_have_attribute("data-label", "scratches")

        # a bad file: the page names the problem, the service keeps serving
        bad = tmp_path / "notes.jpg"
        bad.write_text("operator notes, not an image")
        page.set_input_files("#file", str(bad))
        expect(page.locator("#error")).to_be_visible(timeout=15000)
        expect(page.locator("#error")).to_contain_text("not a recognised image format")
        page.close()
    assert (tmp_path / "operator.png").stat().st_size > 10_000
    # the refused upload is the only failure (its 400, and the browser's console line about it)
    assert [e for e in errors if not e.startswith("Failed to load resource")] == [f"400 {srv.url}/v1/inspect"], errors
    assert len(errors) == 2, errors
