"""Render the HTML report in a real browser (headless Chromium): a screenshot, and a check that
every image decodes and the console stays free of errors.

Used by the test suite and to make the README's screenshot; nothing else in grappa needs a
browser. Chromium is found on ``PATH`` (``chromium``, ``chromium-browser``, ``google-chrome``)
or through ``GRAPPA_CHROMIUM``.
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
#: flags for a sandboxed CI container: no GPU, no sandbox (root), no first-run work
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
         "--disable-extensions", "--allow-file-access-from-files")

CHECK_SCRIPT = """<script>
window.addEventListener('load', function () {
  var images = Array.prototype.slice.call(document.images);
  var broken = images.filter(function (i) { return !(i.complete && i.naturalWidth > 0); })
                     .map(function (i) { return i.getAttribute('src'); });
  document.body.setAttribute('data-image-check', JSON.stringify({total: images.length, broken: broken}));
});
</script>"""


@dataclass
class PageCheck:
    images: int
    broken: list[str] = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)


def find_chromium() -> str | None:
    """The Chromium executable, or None when none is installed."""
    explicit = os.environ.get("GRAPPA_CHROMIUM")
    if explicit:
        return explicit if Path(explicit).exists() else shutil.which(explicit)
    return next((found for name in NAMES if (found := shutil.which(name))), None)


def _run(chromium: str, args: list[str], timeout: int) -> subprocess.CompletedProcess:
    env = {**os.environ, "HOME": os.environ.get("HOME", "/tmp")}
    return subprocess.run([chromium, *FLAGS, "--enable-logging=stderr", "--v=0", *args], capture_output=True,
                          text=True, timeout=timeout, env=env)


def screenshot(page: Path, output: Path, *, width: int = 1300, height: int = 2400, timeout: int = 120,
               chromium: str | None = None) -> Path:
    """A PNG of the top ``width`` x ``height`` pixels of ``page`` as Chromium renders it."""
    chromium = chromium or find_chromium()
    if chromium is None:
        raise FileNotFoundError("Chromium is not installed (apt-get install chromium)")
    output.parent.mkdir(parents=True, exist_ok=True)
    output.unlink(missing_ok=True)
    done = _run(chromium, [f"--window-size={width},{height}", f"--screenshot={output}",
                           "--virtual-time-budget=10000", Path(page).resolve().as_uri()], timeout)
    if not output.is_file():
        raise RuntimeError(f"Chromium wrote no screenshot (exit {done.returncode}): {done.stderr[-2000:]}")
    return output


def check_page(page: Path, *, timeout: int = 120, chromium: str | None = None) -> PageCheck:
    """Load ``page`` in Chromium: how many ``<img>`` it has, which did not decode, and console errors.

    A copy of the page with a small checking script is written next to it (so relative image
    paths resolve the same way) and removed afterwards; the page itself has no script.
    """
    chromium = chromium or find_chromium()
    if chromium is None:
        raise FileNotFoundError("Chromium is not installed (apt-get install chromium)")
    page = Path(page).resolve()
    probe = page.with_name(f".check-{page.name}")
    probe.write_text(page.read_text(encoding="utf-8").replace("</body>", CHECK_SCRIPT + "</body>"),
                     encoding="utf-8")
    try:
        done = _run(chromium, ["--virtual-time-budget=15000", "--dump-dom", probe.as_uri()], timeout)
    finally:
        probe.unlink(missing_ok=True)
    found = re.search(r'data-image-check="([^"]*)"', done.stdout)
    if found is None:
        raise RuntimeError(f"the page's image check did not run (exit {done.returncode}): {done.stderr[-2000:]}")
    result = json.loads(html.unescape(found.group(1)))
    return PageCheck(int(result["total"]), list(result["broken"]), console_errors(done.stderr))


def console_errors(stderr: str) -> list[str]:
    """The page's console errors and failed loads in Chromium's log (not the browser's own messages)."""
    errors = []
    for line in stderr.splitlines():
        console = ":CONSOLE" in line and ("ERROR" in line or "Uncaught" in line or "Failed to load" in line)
        if console or ("net::ERR_" in line and "file://" in line):
            errors.append(line.strip())
    return errors
