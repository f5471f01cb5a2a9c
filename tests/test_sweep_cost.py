"""``brainalign plan``: a sweep's size and predicted cost, checked against a real sweep."""

import json
import os
from pathlib import Path

import numpy as np
import pytest

from brainalign import ValidationError
from brainalign.encoding.ridge import fit_flops
from brainalign.sweep import make_plan, run
from brainalign.sweep.cost import calibrate, estimate, gpu_rates, sweep_size


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from brainalign.datasets import _corpus
    from brainalign.training import train_tiny

    out = tmp_path_factory.mktemp("tiny")
    return train_tiny(_corpus.stories_dir(), out / "model", n_layers=2, hidden=32, heads=2, seq_len=32,
                      steps=12, batch_size=4, checkpoints=3, seed=0)


def _config(tmp_path: Path, model_dir: Path) -> dict:
    return {
        "dataset": {"name": "simulated", "options": {"space": 300, "stories": 4, "features": "random:8", "n_subjects": 2,
                                                     "snr": 2.0}},
        "model": {"name": str(model_dir)},
        "layers": "all",
        "features": {"context_tokens": 32, "batch_size": 8},
        "encoding": {"alphas": {"logspace": [0, 4, 5]}, "n_folds": 3},
        "output": {"store": str(tmp_path / "results.zarr")},
    }


def test_fit_flops_follow_the_solver_shapes():
    a = fit_flops(2000, 400, 1000, n_folds=5, n_alphas=13, n_test=300)
    b = fit_flops(2000, 400, 3000, n_folds=5, n_alphas=13, n_test=300)
    assert a["method"] == "primal" and a["design"] == b["design"]  # shared by all targets
    assert b["targets"] == pytest.approx(3 * a["targets"])  # linear in targets
    k = fit_flops(300, 4000, 1000, n_folds=5, n_alphas=13, n_test=100)
    assert k["method"] == "kernel"  # fewer rows than features: the kernel form, as the solver picks
    # the design part grows with the cube of the rank the solver decomposes
    assert fit_flops(2000, 800, 1)["design"] > 6 * fit_flops(2000, 400, 1)["design"]


def test_size_matches_the_sweep_it_predicts(tmp_path, tiny_run):
    cfg = _config(tmp_path, tiny_run.out_dir)
    plan = make_plan(cfg)
    size = sweep_size(plan)
    ds = plan.dataset()
    assert (size.checkpoints, size.layers, size.subjects) == (3, 3, 2)
    assert size.words == sum(ds.stories[s].n_words for s in ds.stories)
    assert size.hidden == 32 and size.p == 32 * 4
    # the two simulated subjects share their stories: one design per layer for both
    assert len(size.groups) == 1 and size.groups[0]["targets"] == 2 * 300
    assert size.groups[0]["n_train"] == sum(ds.stories[s].n_trs for s in ds.train_stories_of("sim01"))
    # the tokens the forward passes read: what feature extraction itself counts
    from brainalign import features

    fs = features.extract(ds, model=plan.checkpoints[0].model, layers=[1], context_tokens=32, batch_size=8,
                          cache=False, progress=False)
    assert size.tokens_processed == fs.info["tokens_processed"]
    run(cfg, progress=False)
    cache = Path(os.environ["BRAINALIGN_CACHE"]) / "features"
    written = sum(f.stat().st_size for f in cache.rglob("L*.npy"))
    assert written == pytest.approx(size.feature_cache_bytes(), rel=0.10)


def test_calibrated_estimate_is_complete(tmp_path, tiny_run):
    plan = make_plan(_config(tmp_path, tiny_run.out_dir))
    size = sweep_size(plan)
    rates = calibrate(plan, size)
    est = estimate(size, rates)
    secs = est["seconds"]
    assert all(np.isfinite(v) and v >= 0 for v in secs.values()) and secs["total"] > 0
    assert secs["total"] >= secs["features"] + secs["ridge"]
    assert not Path(plan.store_path).exists()  # calibration writes no store of the sweep
    json.dumps(est, default=float)  # --json works


def test_gpu_estimate_and_refusals(tmp_path, tiny_run, capsys):
    from brainalign.cli import main

    plan = make_plan(_config(tmp_path, tiny_run.out_dir))
    size = sweep_size(plan)
    h100, a100 = estimate(size, gpu_rates("h100")), estimate(size, gpu_rates("A100"))
    assert h100["seconds"]["features"] < a100["seconds"]["features"]  # faster peak, less time
    with pytest.raises(ValidationError, match="unknown GPU"):
        gpu_rates("tpu-v9")
    import yaml

    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(_config(tmp_path, tiny_run.out_dir)))
    assert main(["plan", str(path), "--gpu", "h100", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["size"]["checkpoints"] == 3 and out["where"].startswith("NVIDIA H100")


def test_llc_cost_is_its_sgld_tokens(tmp_path, tiny_run):
    """internal_states: [llc] adds chains x draws x batch x seq_len SGLD tokens per
    checkpoint, 6 x parameters FLOPs each, to the predicted time."""
    pytest.importorskip("devinterp", reason="the devinterp extra is not installed")
    base = sweep_size(make_plan(_config(tmp_path, tiny_run.out_dir)))
    cfg = {**_config(tmp_path, tiny_run.out_dir), "internal_states": ["llc"],
           "llc": {"chains": 3, "draws": 10, "batch_size": 8, "seq_len": 16}}
    size = sweep_size(make_plan(cfg))
    assert base.llc_tokens == 0 and size.llc_tokens == 3 * 10 * 8 * 16
    assert size.llc_flops() == pytest.approx(6 * size.params * size.llc_tokens)
    est = estimate(size, gpu_rates("h100"))
    assert est["seconds_per_checkpoint"]["llc"] == pytest.approx(size.llc_flops() / gpu_rates("h100").ridge)
    assert "llc" not in estimate(base, gpu_rates("h100"))["seconds_per_checkpoint"]
