"""Screenshots of the demo report's main sections for the README (issue 17).

    python docs/make_screenshots.py                   # runs `brainalign demo` into a temp folder
    python docs/make_screenshots.py path/report.html  # an existing report

Writes docs/report_findings.png (title, findings, curves), docs/report_maps.png
(cortical maps) and docs/report_internal.png (internal states, downstream tasks,
co-occurrence), each rendered by headless Chromium from a copy of the report that holds
only those sections, trimmed and quantised to stay under 400 kB.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

DOCS = Path(__file__).resolve().parent
#: output name -> section ids shown (the page header is kept on the first)
SHOTS = {
    "report_findings.png": ["findings", "curves"],
    "report_maps.png": ["maps"],
    "report_internal.png": ["internal", "downstream", "cooccurrence"],
}
WIDTH, MAX_BYTES = 1180, 400_000


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    sys.exit("Chromium is needed (Debian: apt-get install chromium)")


def only_sections(page: str, ids: list[str], header: bool) -> str:
    """The report with only the sections ``ids`` (and the header when ``header``)."""
    head, _, rest = page.partition("<body>")
    found = {m.group(1): m.group(0) for m in re.finditer(r"<section id='([^']+)'>.*?</section>", rest, flags=re.S)}
    top = ""
    if header:
        top = re.search(r"<header>.*?</header>", rest, flags=re.S).group(0)
    body = "".join(found[i] for i in ids if i in found)
    return f"{head}<body>{top}{body}</body></html>"


def shoot(html_path: Path, png: Path, profile: Path, height: int = 6000) -> None:
    from PIL import Image, ImageChops

    cmd = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--hide-scrollbars",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={profile}", f"--screenshot={png}", f"--window-size={WIDTH},{height}",
           html_path.resolve().as_uri()]
    subprocess.run(cmd, capture_output=True, timeout=180, check=True)
    im = Image.open(png).convert("RGB")
    bbox = ImageChops.difference(im, Image.new("RGB", im.size, "white")).getbbox()
    if bbox:
        im = im.crop((0, 0, im.width, min(im.height, bbox[3] + 24)))
    scale = 1.0
    while True:
        out = im if scale == 1.0 else im.resize((int(im.width * scale), int(im.height * scale)), Image.LANCZOS)
        out.quantize(colors=128, method=Image.Quantize.MEDIANCUT).save(png, optimize=True)
        if png.stat().st_size < MAX_BYTES or scale < 0.4:
            return
        scale *= 0.85


def report_of_demo(where: Path) -> Path:
    subprocess.run([sys.executable, "-m", "brainalign.cli", "demo", "-o", str(where)], check=True)
    return where / "report.html"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("report", nargs="?", help="an existing report.html (default: run the demo)")
    ap.add_argument("-o", "--out", default=str(DOCS), help="folder for the PNGs (default: docs/)")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        report = Path(args.report) if args.report else report_of_demo(tmp / "demo")
        page = report.read_text()
        for i, (name, ids) in enumerate(SHOTS.items()):
            if not any(f"<section id='{s}'>" in page for s in ids):
                print(f"{name}: the report has no {', '.join(ids)} section; skipped")
                continue
            part = tmp / f"part{i}.html"
            part.write_text(only_sections(page, ids, header=i == 0))
            png = Path(args.out) / name
            shoot(part, png, tmp / "profile")
            print(f"{png} ({png.stat().st_size / 1e3:.0f} kB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
