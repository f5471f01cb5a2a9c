import shutil
import subprocess

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from brainalign.report import Section, write_report


def _chromium():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def screenshot(html_path, png_path, size=(1100, 1400)):
    exe = _chromium()
    if exe is None:
        pytest.skip("Chromium is not installed (Debian package 'chromium'); .ci/run installs it when it can")
    cmd = [
        exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={png_path.parent / 'chromium-profile'}", f"--screenshot={png_path}",
        f"--window-size={size[0]},{size[1]}", html_path.resolve().as_uri(),
    ]
    subprocess.run(cmd, capture_output=True, timeout=120, check=False)
    assert png_path.is_file(), "Chromium wrote no screenshot"
    return np.asarray(Image.open(png_path).convert("RGB")).astype(int)


def test_report_is_self_contained_and_shows_its_figure(tmp_path):
    fig, ax = plt.subplots(figsize=(5, 3))
    ax.add_patch(plt.Rectangle((0, 0), 1, 1, color=(0.0, 0.8, 0.2)))  # a planted green block
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    table = pd.DataFrame({"roi": ["<b>STG</b>", "IFG"], "score": [0.31234, 0.1]})
    out = write_report(tmp_path / "report.html", "A run", [Section("Results", text=["Planted block."], tables=[table], figures=[(fig, "green")])])
    html = out.read_text()
    assert "data:image/png;base64," in html
    assert "src='http" not in html and 'src="http' not in html  # nothing fetched from outside
    assert "&lt;b&gt;STG&lt;/b&gt;" in html and "0.3123" in html  # escaped, formatted
    shot = screenshot(out, tmp_path / "shot.png")
    green = (np.abs(shot[..., 0] - 0) < 30) & (np.abs(shot[..., 1] - 204) < 30) & (np.abs(shot[..., 2] - 51) < 30)
    assert green.sum() > 5000, "the embedded figure is not visible in the rendered page"
