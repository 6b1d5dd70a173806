"""Make ``docs/images/report.png`` (the README's picture of the HTML report) from a demo project.

Renders ``reports/index.html`` in headless Chromium with the same code the browser test uses
(:mod:`grappa_cli.reporting.browser`), then joins the top of the page (Table 2) and the first
two queries of the shapes gallery.

    grappa demo --dir grappa-demo
    python benchmarks/report_screenshot.py grappa-demo
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from grappa_cli.reporting import browser

WIDTH = 1280


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("project", type=Path)
    parser.add_argument("--task", default="shapes", help="the gallery shown under the table")
    parser.add_argument("--output", type=Path, default=Path(__file__).resolve().parents[1] / "docs/images/report.png")
    args = parser.parse_args()
    from PIL import Image

    page = args.project / "reports" / "index.html"
    text = page.read_text(encoding="utf-8")
    # A page that starts at the gallery: the same file with the sections before it hidden.
    anchor = f'id="gallery-{args.task}"'
    if anchor not in text:
        raise SystemExit(f"Error: the report has no gallery of {args.task!r}")
    with tempfile.TemporaryDirectory() as tmp:
        top = browser.screenshot(page, Path(tmp) / "top.png", width=WIDTH, height=620)
        hidden = re.sub(r"<body>.*?(<h3 " + re.escape(anchor) + ")", r"<body>\1", text, count=1, flags=re.S)
        gallery_page = page.with_name(".gallery-only.html")
        gallery_page.write_text(hidden, encoding="utf-8")
        try:
            gallery = browser.screenshot(gallery_page, Path(tmp) / "gallery.png", width=WIDTH, height=725)
        finally:
            gallery_page.unlink(missing_ok=True)
        with Image.open(top) as a, Image.open(gallery) as b:
            joined = Image.new("RGB", (WIDTH, a.height + b.height), "white")
            joined.paste(a, (0, 0))
            joined.paste(b, (0, a.height))
            joined = joined.resize((1024, round(joined.height * 1024 / WIDTH)), Image.Resampling.LANCZOS)
            args.output.parent.mkdir(parents=True, exist_ok=True)
            joined.save(args.output, optimize=True)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
