"""The report in a real browser: headless Chromium lays out every plot, offline.

Uses Debian's ``chromium`` (``make test`` installs it) through Playwright, never a browser
Playwright downloads: CI and clusters are often without network.
"""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from report.page import build_report, write_report
from tests.unit.test_report import PLOTS, build_store

pytestmark = pytest.mark.slow
CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# For every plot: its bounding box, how many shapes it draws and its visible title text.
MEASURE = """() => [...document.querySelectorAll('svg[data-plot]')].map(svg => {
  const box = svg.getBoundingClientRect();
  return {name: svg.dataset.plot, width: box.width, height: box.height,
          shapes: svg.querySelectorAll('path, rect, circle').length,
          texts: [...svg.querySelectorAll('text')].map(t => t.textContent)};
})"""


def test_report_renders_in_chromium(tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: `make test` installs it (apt-get install chromium)")
    uris = build_store(tmp_path)
    page_path = tmp_path / "report.html"
    write_report(str(page_path), build_report(uris["registry"], uris["events"], uris["loop"]))
    shot = tmp_path / "report.png"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            requests: list[str] = []
            page.on("request", lambda request: requests.append(request.url))
            page.goto(page_path.as_uri())
            plots = page.evaluate(MEASURE)
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    assert requests == [page_path.as_uri()]  # self-contained: nothing else is fetched
    assert sorted(plot["name"] for plot in plots) == sorted(PLOTS)
    for plot in plots:
        assert plot["width"] > 100 and plot["height"] > 100, plot
        assert plot["shapes"] > 0, plot
        assert any(text.strip() for text in plot["texts"]), plot  # labels are text, not paths
    png = shot.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 50_000
    width, height = struct.unpack(">II", png[16:24])
    assert width >= 1280 and height > 2000
