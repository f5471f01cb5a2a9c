"""Internal states a sweep computes and stores per checkpoint (``internal_states:`` in the
run config): the LLC with its chain diagnostics, memorisation and the weight norm, on a
model trained here on the induction task, and the errors before any work."""

import json
import sys
from types import SimpleNamespace

import numpy as np
import pytest

from brainalign import ValidationError
from brainalign.sweep import make_plan, run
from brainalign.sweep.config import config_hash, load_config, settings_diff

DATA = {"name": "simulated",
        "options": {"space": "fsaverage5", "stories": 4, "features": "random:8", "n_subjects": 2, "snr": 2.0}}
LLC = {"draws": 16, "chains": 2}


def _config(root, model, **extra) -> dict:
    return {"dataset": DATA, "model": {"name": str(model)}, "layers": "all",
            "features": {"context_tokens": 32, "batch_size": 8, "device": "cpu"},  # SGLD draws differ by device
            "encoding": {"alphas": {"logspace": [0, 4, 5]}, "n_folds": 3},
            "output": {"store": str(root / "results.zarr")}, **extra}


@pytest.fixture(scope="module")
def states_sweep(tmp_path_factory):
    """A 2-layer model trained on the induction task (6 checkpoints: heads form at the
    last), swept with internal_states: [llc, memorisation, weight_norm]."""
    pytest.importorskip("devinterp", reason="the devinterp extra is not installed")
    from brainalign.training import InductionTask, train_task

    root = tmp_path_factory.mktemp("states_sweep")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BRAINALIGN_CACHE", str(root / "cache"))
        mp.setenv("BRAINALIGN_DATA", str(root / "data"))
        tiny = train_task(InductionTask(vocab=32, seq_len=48), root / "model", n_layers=2, hidden=32, heads=2,
                          intermediate=4, steps=400, batch_size=32, checkpoints=6, lr=3e-3, weight_decay=0.0)
        cfg = _config(root, tiny.out_dir, internal_states=["llc", "memorisation", "weight_norm"], llc=LLC)
        sweep = run(cfg, progress=False)
        from brainalign.sweep.analyze import analyze, report

        a = analyze(root / "results.zarr", internal=False, n_boot=0)
        html = report(root / "results.zarr", out=root / "report.html", internal=False, movie=False).read_text()
    return SimpleNamespace(root=root, tiny=tiny, cfg=cfg, res=sweep.results, analysis=a, html=html)


def test_every_checkpoint_has_its_llc_and_chain_diagnostics(states_sweep):
    res, log = states_sweep.res, states_sweep.tiny.log
    n = len(log)
    assert res["llc_trace"].dims == ("checkpoint", "chain", "draw") and res["llc_trace"].shape == (n, 2, 16)
    assert res["llc_chain"].shape == (n, 2) and res["llc_settled"].dtype == bool
    assert np.isfinite(res["llc_trace"].values).all() and np.isfinite(res["llc_init_loss"].values).all()
    llc = res["llc"].values
    # the untrained model is flat around its weights; once the heads form the loss is sharp
    assert llc[-1] > 3 * llc[0] and llc[-1] > 0.5
    np.testing.assert_allclose(res["llc"].values, res["llc_chain"].values.mean(1), rtol=1e-5)
    info = res.attrs["internal_states"]
    assert info["computed"] == ["llc", "memorisation", "weight_norm"]
    assert info["llc"]["settings"]["draws"] == 16 and "induction task" in info["llc"]["data"]


def test_stored_llc_is_the_seeded_estimate(states_sweep):
    """The store's LLC is estimate_llc of the checkpoint on the task's training data with
    the config's seed: rerunning it gives the same number."""
    from transformers import AutoModelForCausalLM

    from brainalign.dynamics.llc import estimate_llc
    from brainalign.dynamics.states import CheckpointContext, llc_data, llc_settings

    cfg = load_config(states_sweep.cfg)
    label = states_sweep.tiny.log[-1]["name"]
    folder = states_sweep.tiny.checkpoints[label]
    ctx = CheckpointContext(str(folder), None, settings={"llc": cfg.llc.model_dump()})
    x, positions, _ = llc_data(ctx)
    assert x.shape == (256, 48) and positions.sum() == 47  # every next token
    est = estimate_llc(AutoModelForCausalLM.from_pretrained(folder), x, llc_settings(cfg.llc.model_dump()), positions)
    stored = states_sweep.res.sel(checkpoint=label)
    assert float(stored["llc"]) == pytest.approx(float(est["llc"]), rel=1e-5)
    np.testing.assert_allclose(stored["llc_trace"].values, est["loss_trace"].values, rtol=1e-5)


def test_memorisation_and_weight_norm_are_the_training_logs(states_sweep):
    res = states_sweep.res
    by_name = {r["name"]: r for r in states_sweep.tiny.log}
    labels = res.checkpoint.values.tolist()
    for var, key in (("train_acc", "train_acc"), ("heldout_acc", "heldout_acc"), ("memorisation", "memorisation"),
                     ("train_loss", "train_loss"), ("memorisation_gap", "gap"), ("weight_norm", "param_norm")):
        np.testing.assert_allclose(res[var].values, [by_name[c][key] for c in labels], rtol=1e-5, err_msg=var)


def test_analysis_and_report_show_the_stored_states(states_sweep):
    curves = states_sweep.analysis["state_curves"]
    for name in ("local learning coefficient", "weight norm", "held-out accuracy", "memorisation index"):
        assert name in curves, sorted(curves)
        np.testing.assert_array_equal(curves[name].tokens.values, states_sweep.res.tokens.values)
    np.testing.assert_allclose(curves["local learning coefficient"].values, states_sweep.res["llc"].values, rtol=1e-6)
    assert not {"llc_std", "llc_init_loss"} & set(curves)  # diagnostics, not curves over training
    html = states_sweep.html
    assert "Learning coefficient: chain diagnostics" in html and "induction task" in html
    assert "Stored by the sweep (internal_states): llc, memorisation, weight_norm" in html
    settled = states_sweep.res["llc_settled"].values.all(1)
    assert ("Every chain settled" in html) == bool(settled.all())
    if not settled.all():
        assert "did not settle at" in html


def test_a_report_needs_neither_the_extra_nor_the_logs_of_stored_states(states_sweep, monkeypatch, tmp_path):
    """The states are in the store: analysing it (internal states included) on a machine
    without devinterp, and with the training log gone, still works and reads them."""
    from brainalign.sweep.analyze import analyze

    store = tmp_path / "copy.zarr"
    import shutil

    shutil.copytree(states_sweep.root / "results.zarr", store)
    monkeypatch.setitem(sys.modules, "devinterp", None)
    monkeypatch.setitem(sys.modules, "devinterp.slt", None)
    monkeypatch.setitem(sys.modules, "devinterp.slt.llc", None)
    a = analyze(store, internal=True, n_boot=0)
    assert "CKA to the final checkpoint" in a["state_curves"]  # computed now, from the checkpoints
    np.testing.assert_allclose(a["state_curves"]["local learning coefficient"].values, states_sweep.res["llc"].values,
                               rtol=1e-6)


def test_internal_states_are_part_of_the_settings_hash(tmp_path):
    base = load_config(_config(tmp_path, tmp_path))
    with_llc = load_config(_config(tmp_path, tmp_path, internal_states=["llc"]))
    other = load_config(_config(tmp_path, tmp_path, internal_states=["llc"], llc={"draws": 50}))
    norm = load_config(_config(tmp_path, tmp_path, internal_states=["weight_norm"], llc={"draws": 50}))
    hashes = {config_hash(c) for c in (base, with_llc, other, norm)}
    assert len(hashes) == 4
    # the llc: section counts only when the LLC is computed
    assert config_hash(norm) == config_hash(load_config(_config(tmp_path, tmp_path, internal_states=["weight_norm"])))
    assert any(d.startswith("llc.draws: 100 -> 50") for d in settings_diff(with_llc, other))
    with pytest.raises(ValidationError, match="unknown internal state 'lcc'; known: llc, memorisation, weight_norm"):
        load_config(_config(tmp_path, tmp_path, internal_states=["lcc"]))
    with pytest.raises(ValidationError, match="llc.draws"):
        load_config(_config(tmp_path, tmp_path, internal_states=["llc"], llc={"draws": 4}))


def test_states_that_cannot_be_computed_are_refused_before_any_work(tmp_path, monkeypatch):
    from brainalign.features.testing import tiny_checkpoint

    gpt2 = tiny_checkpoint(tmp_path / "gpt2", "gpt2")
    bert = tiny_checkpoint(tmp_path / "bert", "bert")
    with pytest.raises(ValidationError, match="memorisation reads the training_log.json"):
        make_plan(_config(tmp_path, gpt2, internal_states=["memorisation"]))
    if "devinterp" in sys.modules or _has_devinterp():
        with pytest.raises(ValidationError, match="llc needs a causal language model"):
            make_plan(_config(tmp_path, bert, internal_states=["llc"]))
        with pytest.raises(ValidationError, match="fewer than llc.batch_size=64"):
            make_plan(_config(tmp_path, gpt2, internal_states=["llc"], llc={"sequences": 10, "batch_size": 64}))
    if _has_devinterp():
        with pytest.raises(ValidationError, match="llc.restrict: 'h0'"):
            make_plan(_config(tmp_path, gpt2, internal_states=["llc"], llc={"restrict": "h0"}))
    with pytest.raises(ValidationError, match="stages: together"):
        make_plan(_config(tmp_path, gpt2, internal_states=["weight_norm"],
                          executor={"stages": "separate"}))
    monkeypatch.setitem(sys.modules, "devinterp", None)  # as if the extra were not installed
    monkeypatch.setitem(sys.modules, "devinterp.slt", None)
    monkeypatch.setitem(sys.modules, "devinterp.slt.llc", None)
    with pytest.raises(ValidationError, match=r"pip install 'brainalign\[devinterp\]'"):
        make_plan(_config(tmp_path, gpt2, internal_states=["llc"]))
    assert not (tmp_path / "results.zarr").exists()
    # a model without a training log still gets its weight norm (any model, encoders too)
    plan = make_plan(_config(tmp_path, bert, internal_states=["weight_norm"]))
    assert plan.config.internal_states == ["weight_norm"]


def _has_devinterp() -> bool:
    try:
        import devinterp  # noqa: F401
    except ImportError:
        return False
    return True


def test_llc_of_a_story_model_is_measured_on_windows_of_the_stories(tmp_path, capsys):
    """``brainalign run`` on a model not trained on a task: the LLC's data are windows of
    the stimulus stories' tokens (next-token loss); one estimate per checkpoint is stored."""
    pytest.importorskip("devinterp", reason="the devinterp extra is not installed")
    import yaml

    from brainalign.cli import main
    from brainalign.features.testing import tiny_checkpoint
    from brainalign.sweep import Sweep

    gpt2 = tiny_checkpoint(tmp_path / "run" / "checkpoint-1", "gpt2")
    for f in gpt2.iterdir():  # Trainer's layout: the tokenizer in the run folder, beside the checkpoints
        if f.name not in ("config.json", "model.safetensors", "generation_config.json"):
            f.rename(tmp_path / "run" / f.name)
    cfg = _config(tmp_path, tmp_path / "run", internal_states=["llc", "weight_norm"],
                  llc={"draws": 8, "sequences": 64, "seq_len": 32})
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["run", str(path), "--dry-run"]) == 0
    assert "internal states, stored per checkpoint: llc, weight_norm (LLC: 2 chains x 8 draws" in capsys.readouterr().out
    assert main(["run", str(path), "--no-report"]) == 0
    res = Sweep(tmp_path / "results.zarr").results
    assert res.sizes["checkpoint"] == 1 and np.isfinite(float(res["llc"][0]))
    assert res["llc_trace"].shape == (1, 2, 8)
    assert res.attrs["internal_states"]["llc"]["data"].startswith("64 windows of 32 tokens of the stimulus stories")
    import torch
    from transformers import AutoModelForCausalLM

    m = AutoModelForCausalLM.from_pretrained(gpt2)
    norm = float(torch.sqrt(sum((p.detach().double() ** 2).sum() for p in m.parameters())))
    assert float(res["weight_norm"][0]) == pytest.approx(norm, rel=1e-5)
    assert "train_acc" not in res  # memorisation not asked for
    stored = json.loads(json.dumps(res.attrs["internal_states"]))
    assert stored["computed"] == ["llc", "weight_norm"]


def test_a_registered_metric_is_stored_and_analysed(tmp_path, monkeypatch):
    """The README's contract: a StateMetric in STATE_METRICS is a name internal_states:
    takes; the sweep stores its variables and the analysis has its curve."""
    from brainalign.dynamics.states import STATE_METRICS, StateMetric
    from brainalign.features.testing import tiny_checkpoint
    from brainalign.sweep.analyze import analyze

    def embedding_norm(ctx):
        emb = ctx.module().get_input_embeddings().weight.detach()
        return {"embedding_norm": float(emb.norm()), "first_rows": emb[:3, 0].numpy(),
                "per_layer": np.array([10.0, 20.0])}

    monkeypatch.setitem(STATE_METRICS, "embedding_norm", StateMetric(
        "embedding_norm", {"embedding_norm": ((), "float32"), "first_rows": (("row",), "float32"),
                           "per_layer": (("layer",), "float32")},
        embedding_norm, axes=lambda settings: {"row": 3}))
    model = tmp_path / "run"
    for i in (1, 2):  # two checkpoints of different weights
        tiny_checkpoint(model / f"checkpoint-{i}", "gpt2", seed=i)
    res = run(_config(tmp_path, model, internal_states=["embedding_norm"], layers=[0, 2]), progress=False).results
    assert res["first_rows"].dims == ("checkpoint", "row") and np.isfinite(res["first_rows"].values).all()
    np.testing.assert_array_equal(res["per_layer"].values, [[10.0, 20.0]] * 2)  # in the sweep's layer order
    from transformers import AutoModel

    want = [float(AutoModel.from_pretrained(model / c).get_input_embeddings().weight.detach().norm())
            for c in res.checkpoint.values]
    np.testing.assert_allclose(res["embedding_norm"].values, want, rtol=1e-5)
    assert want[0] != pytest.approx(want[1])
    curves = analyze(tmp_path / "results.zarr", internal=False, n_boot=0)["state_curves"]
    np.testing.assert_allclose(curves["embedding_norm"].values, want, rtol=1e-5)
    assert "first_rows" not in curves and "per_layer" not in curves
    monkeypatch.setitem(STATE_METRICS, "clash", StateMetric("clash", {"score": ((), "float32")}, embedding_norm))
    with pytest.raises(ValidationError, match=r"its variables \['score'\] are already in the store"):
        make_plan(_config(tmp_path / "b", model, internal_states=["clash"]))


def test_refined_llc_of_one_head_is_below_the_whole_models(states_sweep):
    """devinterp's weight restriction (llc.restrict): the LLC of one attention head's
    weights is a fraction of the whole model's; an unknown restriction names the setting."""
    from transformers import AutoModelForCausalLM

    from brainalign.dynamics.llc import LLCSettings, estimate_llc
    from brainalign.dynamics.states import CheckpointContext, llc_data

    folder = states_sweep.tiny.checkpoints[states_sweep.tiny.log[-1]["name"]]
    x, positions, _ = llc_data(CheckpointContext(str(folder), None, settings={"llc": {}}))
    model = AutoModelForCausalLM.from_pretrained(folder)
    whole = float(estimate_llc(model, x, LLCSettings(draws=16), positions)["llc"])
    head = float(estimate_llc(model, x, LLCSettings(draws=16, restrict="l1h0"), positions)["llc"])
    assert 0 < head < 0.5 * whole, (head, whole)
    with pytest.raises(ValidationError, match="restrict='h0'"):
        estimate_llc(model, x, LLCSettings(draws=8, restrict="h0"), positions)


def test_settled_chains_are_level_ones_whatever_their_noise():
    """A chain that rose and levelled off, or one flat within its minibatch noise (near
    initialisation), has settled; one still climbing has not."""
    from brainalign.dynamics.llc import chains_settled

    rng = np.random.default_rng(0)
    draws = np.arange(100)
    level = 1.0 + 0.5 * (1 - np.exp(-draws / 10))  # rose by 0.5 within 30 draws
    flat = np.full(100, 1.0)  # no rise: only noise
    climbing = 1.0 + 0.01 * draws  # still rising at the end
    noise = rng.normal(0, 0.01, (3, 100))
    ok = chains_settled(np.stack([level, flat, climbing]) + noise, 1.0)
    assert ok.tolist() == [True, True, False]
    assert not chains_settled(np.full((1, 100), np.nan), 1.0)[0]


def test_an_llc_estimate_leaves_the_callers_random_generators_alone(states_sweep):
    import random

    from transformers import AutoModelForCausalLM

    from brainalign.dynamics.llc import LLCSettings, estimate_llc
    from brainalign.dynamics.states import CheckpointContext, llc_data

    folder = states_sweep.tiny.checkpoints[states_sweep.tiny.log[-1]["name"]]
    x, positions, _ = llc_data(CheckpointContext(str(folder), None, settings={"llc": {}}))
    model = AutoModelForCausalLM.from_pretrained(folder)
    random.seed(11)
    np.random.seed(11)
    want = (random.random(), np.random.rand())
    random.seed(11)
    np.random.seed(11)
    estimate_llc(model, x, LLCSettings(draws=8), positions)
    assert (random.random(), np.random.rand()) == want
