"""Scores a few models under the ``simulated-v1`` protocol and screenshots their leaderboard.

    .venv/bin/python docs/make_leaderboard.py MODEL_DIR [--out OUT]

MODEL_DIR: a folder of ``checkpoint-*`` subfolders (e.g. the demo's ``tiny-gpt-neox``);
three of its checkpoints and the packaged MiniLM are scored (with the random-init and
word-rate baselines), then ``brainalign leaderboard`` writes the tables and headless
Chromium (``/usr/bin/chromium``) takes ``docs/leaderboard.png``.
"""

from __future__ import annotations

import argparse
import subprocess
from pathlib import Path


def main() -> None:
    from brainalign.features.loading import minilm_path
    from brainalign.protocols import leaderboard, score

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model_dir")
    ap.add_argument("--out", default="brainalign-leaderboard")
    a = ap.parse_args()
    out = Path(a.out)
    subs = sorted((d.name for d in Path(a.model_dir).iterdir() if d.name.startswith("checkpoint-")),
                  key=lambda n: int(n.rsplit("-", 1)[1]))
    for rev in (subs[1], subs[len(subs) // 2], subs[-1]):
        score(a.model_dir, protocol="simulated-v1", revision=rev, out=out / f"tiny-{rev}")
    score(str(minilm_path()), protocol="simulated-v1", out=out / "minilm")
    leaderboard(out)
    png = Path(__file__).resolve().parent / "leaderboard.png"
    subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    f"--screenshot={png}", "--window-size=1700,420", (out / "leaderboard.html").resolve().as_uri()],
                   check=True)
    print(png)


if __name__ == "__main__":
    main()
