"""The HTML report in a real headless Chromium (Debian's package, installed here when missing): it loads
from file:// with no console errors, renders to a screenshot, and its DOM has the expected structure."""

from __future__ import annotations

import os
import struct
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from jobs import filter as filter_job
from jobs import report as report_job
from jobs.cli import run

pytestmark = pytest.mark.usefixtures("ray_local")
CHROMIUM = Path("/usr/bin/chromium")
PERCENTILE_LABELS = ["lowest", "10 %", "median", "90 %", "highest"]


@pytest.fixture(scope="session")
def chromium() -> Path:
    """Debian's Chromium: installed with apt-get when missing. The test needs it: no skip, a clear failure."""
    if not CHROMIUM.exists():
        env = {k: v for k, v in os.environ.items() if k.lower() not in ("http_proxy", "https_proxy")}
        env["DEBIAN_FRONTEND"] = "noninteractive"  # a package registry, not a test server: no dead proxy
        for command in (["apt-get", "update"], ["apt-get", "install", "-y", "chromium"]):
            result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
            if result.returncode != 0:
                pytest.fail(
                    f"the report tests need Debian's chromium, and `{' '.join(command)}` failed with exit "
                    f"{result.returncode}; run `apt-get install chromium` as root:\n{result.stderr[-2000:]}"
                )
    return CHROMIUM


def chromium_run(chromium: Path, page: Path, profile: Path, *options: str) -> subprocess.CompletedProcess:
    """Chromium headless on a file:// page, every network feature off and a dead proxy as a backstop."""
    command = [
        str(chromium),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--proxy-server=http://127.0.0.1:9",
        f"--user-data-dir={profile}",
        "--enable-logging=stderr",
        "--log-level=0",  # console messages are INFO lines: `...:INFO:CONSOLE:1] "message", source: ...`
        "--v=0",
        *options,
        page.as_uri(),
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def console_errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line or "Refused to" in line]


class Dom(HTMLParser):
    """The elements of a page as (tag, attributes, enclosing ids/classes), for structural checks."""

    def __init__(self, markup: str) -> None:
        super().__init__()
        self.elements: list[tuple[str, dict[str, str], tuple[str, ...]]] = []
        self._open: list[tuple[str, str]] = []
        self.feed(markup)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = {name: value or "" for name, value in attrs}
        self.elements.append((tag, attributes, tuple(marker for _, marker in self._open)))
        if tag not in ("img", "br", "meta", "link", "input"):
            self._open.append((tag, attributes.get("id") or attributes.get("class") or ""))

    def handle_endtag(self, tag: str) -> None:
        while self._open and self._open.pop()[0] != tag:
            pass

    def find(self, tag: str, inside: str | None = None, **attributes: str) -> list[dict[str, str]]:
        return [
            attrs
            for name, attrs, parents in self.elements
            if name == tag
            and (inside is None or inside in parents)
            and all(attrs.get(key.rstrip("_")) == value for key, value in attributes.items())
        ]


def render(chromium: Path, page: Path, tmp_path: Path, screenshot: Path) -> Dom:
    shot = chromium_run(
        chromium, page, tmp_path / "profile-shot", f"--screenshot={screenshot}", "--window-size=1280,2000"
    )
    assert shot.returncode == 0, shot.stderr[-2000:]
    assert console_errors(shot.stderr) == []
    png = screenshot.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and struct.unpack(">II", png[16:24]) == (1280, 2000)
    dumped = chromium_run(chromium, page, tmp_path / "profile-dom", "--dump-dom")
    assert dumped.returncode == 0, dumped.stderr[-2000:]
    assert console_errors(dumped.stderr) == []
    return Dom(dumped.stdout)


def test_console_errors_are_caught(chromium, tmp_path):
    """The check below would pass vacuously if Chromium stopped logging the console: prove it logs."""
    page = tmp_path / "broken.html"
    page.write_text("<!DOCTYPE html><script>console.error('boom'); notDefined();</script>")
    errors = console_errors(chromium_run(chromium, page, tmp_path / "profile", "--dump-dom").stderr)
    assert any("boom" in line for line in errors) and any("Uncaught ReferenceError" in line for line in errors)


def test_report_page_in_chromium(chromium, scored_folder, tmp_path, capsys):
    page = tmp_path / "report.html"
    assert run([scored_folder.scores, "--out", str(page), "--group", "face_box"], report_job.build_parser) == 1
    assert "cannot group the report by 'face_box': pick a scalar score column (key, " in capsys.readouterr().err
    assert run([scored_folder.scores, "--out", str(page)], report_job.build_parser) == 0

    dom = render(chromium, page, tmp_path, tmp_path / "report.png")
    [histogram] = dom.find("img", id="histogram")
    assert histogram["src"].startswith("data:image/png;base64,")
    figures = dom.find("figure", class_="thumb")
    assert [figure["data-percentile"] for figure in figures] == PERCENTILE_LABELS
    thumbs = dom.find("img", inside="percentiles")
    assert len(thumbs) == 5 and all(img["src"].startswith("data:image/jpeg;base64,") for img in thumbs)
    for table in ("statuses", "per-num_faces", "per-shard"):
        assert dom.find("table", id=table), table
    assert len(dom.find("tr", inside="per-shard")) == 1 + 4  # header + 4 shards
    assert len(dom.find("tr", inside="statuses")) == 1 + 4  # ok, decode_error, too_large, unsupported
    assert not [img for img in dom.find("img") if not img["src"].startswith("data:")], "the page must not fetch"
    assert not dom.find("p", id="untrained"), "the shipped starter model is trained: no warning box"
    assert dom.find("p", id="scale") and "scores: 0-100, higher is better" in page.read_text()  # calibrated


def test_filter_report_shows_kept_and_dropped(chromium, scored_folder, tmp_path):
    argv = [scored_folder.scores, "--out", str(tmp_path / "out"), "--top-fraction", "0.5", "--report"]
    assert run(argv, filter_job.build_parser) == 0

    dom = render(chromium, tmp_path / "out" / "report.html", tmp_path, tmp_path / "filter.png")
    assert len(dom.find("figure", class_="thumb")) == 5
    assert (
        len(dom.find("span", inside="percentiles", class_="kept")) == 3
    )  # picks at ranks 0, 0, 2, 4, 4 of 5; the best 3 kept
    assert len(dom.find("span", inside="percentiles", class_="dropped")) == 2
    assert len(dom.find("tr", inside="rules")) == 1 + 3  # kept, status, top_fraction
