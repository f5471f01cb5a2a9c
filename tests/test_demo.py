"""The embedded demo, in its quick form: the whole pipeline, offline."""

import json
from pathlib import Path

import numpy as np

from brainalign.cli import main
from brainalign.sweep import Sweep


def test_quick_demo_writes_report_and_finds_the_planted_regions(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert str(out / "report.html") in printed
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 4 and "data:image/gif;base64," in html
    assert "noise ceiling (ROI mean)" in html  # beside the raw scores, not instead of them
    for fig in ("curves.png", "layer_heatmap.png", "flatmap_best.png", "internal_states.png"):
        assert (out / "figures" / fig).stat().st_size > 10_000, fig
    res = Sweep(out / "results.zarr").results
    assert bool(res.done.all()) and res.sizes["checkpoint"] == 6
    assert float(res.step.values[0]) == 0  # the untrained model is the first checkpoint
    # the model was trained on the training corpus, not on the stimulus stories, and says so
    from brainalign.demo import training_corpus_dir

    corpus = json.loads((out / "tiny-gpt-neox" / "training_log.json").read_text())["corpus"]
    assert Path(corpus["source"]) == training_corpus_dir().resolve() and corpus["documents"] >= 8
    assert "training_corpus" in printed and "disjoint from the stimulus stories" in printed
    assert "training_corpus" in (out / "config.yaml").read_text().splitlines()[0]
    timings = json.loads((out / "demo_timings.json").read_text())
    assert set(timings["stages_s"]) == {"train", "simulate", "sweep", "internal_states", "report"}
    assert timings["checkpoints"] == 6 and timings["peak_rss_mb"] > 0
    # the MiniLM-driven (planted) regions are more aligned than the rest of the cortex
    best = res.roi_score.max("layer").mean(["subject", "checkpoint"])
    planted = [r for r in res.roi.values if "other_cortex" not in r]
    others = [r for r in res.roi.values if "other_cortex" in r]
    assert len(planted) == 4 and len(others) == 2
    assert float(best.sel(roi=planted).min()) > 3 * float(np.abs(best.sel(roi=others)).max())
    assert float(best.sel(roi=planted).min()) > 0.05
    # significance: the planted ROIs are above chance, the rest of the cortex (no signal
    # in any subject) is not and gets no phase claim; the thresholded map is drawn
    from brainalign.sweep.analyze import analyze

    a = analyze(out / "results.zarr", internal=False)
    curves = a["curves"]
    strong = [r for r in planted if float(curves["score_mean"].sel(roi=r).max()) > 0.1]
    assert len(strong) >= 2 and bool(curves["significant"].sel(roi=strong).all())
    assert float(curves["adjusted_p"].sel(roi=strong).max()) < 1e-3
    # the ROI test holds its level (5% per ROI), so a null ROI is not asserted never to
    # pass it; far beyond its level it should not, and no rise or fall is claimed there
    assert float(curves["adjusted_p"].sel(roi=others).min()) > 0.01
    for r in others:  # (the quick demo's 6 checkpoints may be too few for phases at all)
        pattern = a["phases"][r].pattern if r in a["phases"] else ""
        assert "rise" not in pattern and "fall" not in pattern
    assert "above chance" in html and (out / "figures" / "flatmap_significant.png").stat().st_size > 10_000

    # the report and flatmap commands on the demo's store
    ck = str(res.checkpoint.values[-1])
    assert main(["flatmap", str(out / "results.zarr"), "--checkpoint", ck, "--layer", "1", "-o", str(tmp_path / "m.png")]) == 0
    assert (tmp_path / "m.png").stat().st_size > 10_000
    assert main(["flatmap", str(out / "results.zarr"), "--checkpoint", "nope", "--layer", "1"]) == 2
    assert "no checkpoint 'nope'" in capsys.readouterr().err
    assert main(["report", str(out / "results.zarr"), "-o", str(tmp_path / "again.html")]) == 0
    assert "data:image/gif;base64," in (tmp_path / "again.html").read_text()
