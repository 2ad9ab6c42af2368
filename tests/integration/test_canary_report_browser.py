"""The canary report in a real browser: headless Debian chromium loads the page written
by the report code, and what it drew is checked in the DOM and on a screenshot.

chromium comes from ``make debian-packages`` (part of ``make test``)."""

from __future__ import annotations

import shutil
import struct
import subprocess
from pathlib import Path

from pipeline.canary.report import render_html
from tests.unit.test_canary_report import payload

FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)


def chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    assert binary, "chromium is missing: run `make debian-packages`"
    profile = tmp_path / f"profile-{len(list(tmp_path.iterdir()))}"
    return subprocess.run(
        [binary, *FLAGS, f"--user-data-dir={profile}", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_the_report_renders_in_headless_chromium(tmp_path: Path) -> None:
    page = tmp_path / "report.html"
    page.write_text(render_html(payload()), encoding="utf-8")

    dom = chromium(tmp_path, "--dump-dom", page.as_uri())
    assert dom.returncode == 0, dom.stderr[-2000:]
    html = dom.stdout
    assert html.count('<section class="group"') == 2
    for kind in ("evidence", "effect", "latency", "timeline"):
        assert html.count(f'class="chart {kind}"') == 2, kind
    assert "<polyline" in html and 'class="threshold"' in html
    # the conversion funnel: its bars on its path group and in its own section
    assert html.count('<section class="funnel" data-funnel="checkout"') == 1
    assert html.count('class="chart funnel"') == 2
    assert html.count('class="chart funnel-evidence"') == 1
    assert html.count('class="bar canary"') == 4 and html.count('class="bar stable"') == 4

    shot = tmp_path / "report.png"
    result = chromium(tmp_path, f"--screenshot={shot}", "--window-size=1280,1600", page.as_uri())
    assert result.returncode == 0, result.stderr[-2000:]
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    assert (width, height) == (1280, 1600)
    assert len(data) > 20_000  # a page with charts, not a blank one
