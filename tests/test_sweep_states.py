"""Internal states of real sweeps: head scores, ICL and instruction following for hub
revisions (an offline Hugging Face cache), memorisation of train-tiny models and what
they were trained on, and every key analyze() returns."""

import json
import logging
import shutil
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from brainalign.sweep import run
from brainalign.sweep.analyze import STATE_CURVES, analyze, internal_state_curves

DATA = {"name": "simulated",
        "options": {"space": "fsaverage5", "stories": 4, "features": "random:8", "n_subjects": 2, "snr": 2.0}}


def _config(root, model: dict, **extra) -> dict:
    return {"dataset": DATA, "model": model, "layers": "all",
            "features": {"context_tokens": 32, "batch_size": 8},
            "encoding": {"alphas": {"logspace": [0, 4, 5]}, "n_folds": 3},
            "output": {"store": str(root / "results.zarr")}, **extra}


@pytest.fixture(scope="module")
def tiny_sweep(tmp_path_factory):
    """A train-tiny model (7 checkpoints) trained on a corpus holding the text (under
    another file name) of one of the sweep's stimulus stories and two other stories,
    swept with a downstream CSV whose accuracy steps up at checkpoint 3 of 7."""
    from brainalign import datasets
    from brainalign.datasets import _corpus
    from brainalign.training import train_tiny

    root = tmp_path_factory.mktemp("tiny_sweep")
    with pytest.MonkeyPatch.context() as mp:  # module fixtures run before the per-test cache is set
        mp.setenv("BRAINALIGN_CACHE", str(root / "cache"))
        mp.setenv("BRAINALIGN_DATA", str(root / "data"))
        stimuli = list(datasets.load("simulated", **DATA["options"]).stories)
        corpus = root / "corpus"
        corpus.mkdir()
        (corpus / "renamed.txt").write_text(_corpus.read_story_text(stimuli[0]))
        others = [n for n in _corpus.story_names() if n not in stimuli][:2]
        for name in others:
            shutil.copy(_corpus.stories_dir() / f"{name}.txt", corpus / f"{name}.txt")
        tiny = train_tiny(corpus, root / "model", n_layers=2, hidden=32, heads=2, seq_len=32,
                          steps=40, batch_size=4, checkpoints=7, seed=0)
        names = list(tiny.checkpoints)
        csv = root / "downstream.csv"
        pd.DataFrame({"checkpoint": names, "task": "toy", "metric": "acc",
                      "value": [0.25] * 3 + [0.75] * (len(names) - 3)}).to_csv(csv, index=False)
        run(_config(root, {"name": str(tiny.out_dir)}, downstream={"path": str(csv)}), progress=False)
        a = analyze(root / "results.zarr", n_boot=20)
    return SimpleNamespace(root=root, tiny=tiny, stimuli=stimuli, others=others, analysis=a, names=names)


def test_analyze_returns_every_key_with_its_shape(tiny_sweep):
    a = tiny_sweep.analysis
    for key in ("results", "curves", "phases", "phase_table", "internal", "state_curves", "downstream",
                "state_phases", "cooccurrence", "training"):
        assert key in a
    n = len(tiny_sweep.names)
    curves = a["state_curves"]
    for name in ("CKA to the final checkpoint", "effective dimensionality", "induction head score",
                 "previous-token head score", "in-context learning score", "instruction following",
                 "training loss", "held-out loss", "memorisation gap", "LM loss on the stories"):
        assert name in curves, name
        da = curves[name]
        assert da.dims == ("checkpoint",) and da.sizes["checkpoint"] == n and "tokens" in da.coords
    np.testing.assert_array_equal(curves["training loss"].tokens.values, a["results"].tokens.values)
    inst = curves["instruction following"].values
    assert ((inst >= 0) & (inst <= 1)).all()
    ds = a["downstream"]
    assert isinstance(ds, xr.Dataset) and list(ds.data_vars) == ["toy"] and ds.sizes["checkpoint"] == n
    np.testing.assert_allclose(ds["toy"].values, [0.25] * 3 + [0.75] * (n - 3))
    assert "toy" in a["state_phases"] and "training loss" in a["state_phases"]
    co = a["cooccurrence"]
    assert list(co.columns[:6]) == ["roi", "transition", "change", "tokens", "tokens_lo", "tokens_hi"]
    assert {"state", "state_tokens", "state_distance_log10", "downstream", "downstream_tokens",
            "downstream_distance_log10"} <= set(co.columns)
    sig = {r for r, p in a["phases"].items() if p.significant is not False and p.transitions}
    assert set(co["roi"]) == sig
    for _, row in co.iterrows():  # each distance is the nearest transition's, in log10 tokens
        tr = a["state_phases"][row["downstream"]].transitions if row["downstream"] else []
        if tr:
            d = min((np.log10(t.at) - np.log10(row["tokens"]) for t in tr), key=abs)
            assert row["downstream_distance_log10"] == pytest.approx(d)


def test_memorisation_gap_is_the_training_logs(tiny_sweep):
    a = tiny_sweep.analysis
    log = json.loads((tiny_sweep.tiny.out_dir / "training_log.json").read_text())["checkpoints"]
    by_name = {r["name"]: r for r in log}
    labels = a["results"].checkpoint.values.tolist()
    for var, key in (("memorisation gap", "gap"), ("training loss", "train_loss"), ("held-out loss", "heldout_loss")):
        np.testing.assert_allclose(a["state_curves"][var].values, [by_name[c][key] for c in labels])
    np.testing.assert_allclose(a["internal"]["memorisation_gap"].values, [by_name[c]["gap"] for c in labels])


def test_training_corpus_says_which_stimulus_stories_it_holds(tiny_sweep):
    t = tiny_sweep.analysis["training"]
    assert t["source"] == str((tiny_sweep.root / "corpus").resolve())
    assert sorted(t["files"]) == sorted(["renamed.txt", *(f"{n}.txt" for n in tiny_sweep.others)])
    assert t["words"] > 0 and t["documents"] == 3
    assert t["stories"] == sorted(tiny_sweep.stimuli)
    # found by its text although the file has another name; the others are not in it
    assert t["stories_in_corpus"] == [tiny_sweep.stimuli[0]] and t["named"] == [] and t["disjoint"] is False
    assert t["overlap"][tiny_sweep.stimuli[0]] > 0.9
    assert all(t["overlap"][s] < 0.1 for s in tiny_sweep.stimuli[1:])
    assert t["checked"] == "text and names"


def test_analyze_without_internal_keeps_memorisation_and_lm_loss(tiny_sweep):
    a = analyze(tiny_sweep.root / "results.zarr", internal=False, n_boot=0)
    assert a["internal"] is None
    assert {"memorisation gap", "LM loss on the stories"} <= set(a["state_curves"])
    assert "induction head score" not in a["state_curves"]


# -- hub revisions -------------------------------------------------------------------------------
@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    import huggingface_hub.constants as c

    from brainalign.features.testing import tiny_hub_cache

    root = tmp_path / "hf" / "hub"
    tiny_hub_cache(root, "tiny-org/tiny-neox", ["step100", "step300", "step1000", "step3000"], arch="gpt_neox",
                   n_layers=2, hidden=32)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(root))
    monkeypatch.setenv("HF_HOME", str(root.parent))
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(c, "HF_HUB_CACHE", str(root))  # read at import: the in-process sweep needs it set here
    return root


def test_hub_revision_sweep_gets_head_scores_icl_and_instruction_following(tmp_path, offline_hub):
    cfg = _config(tmp_path, {"name": "tiny-org/tiny-neox", "revisions": {"every": 1}})
    cfg["features"]["context_tokens"] = 16
    run(cfg, progress=False)
    states = internal_state_curves(tmp_path / "results.zarr")
    assert list(states.checkpoint.values) == ["step100", "step300", "step1000", "step3000"]
    for var in ("induction_max", "prev_token_max"):
        assert states[var].dims == ("checkpoint", "layer")
        assert np.isnan(states[var].sel(layer=0).values).all()  # the embeddings have no attention heads
        v = states[var].sel(layer=[1, 2]).values
        assert np.isfinite(v).all() and ((v >= 0) & (v <= 1)).all()
    assert np.isfinite(states["icl_score"].values).all()
    assert np.isfinite(states["instruction_following"].values).all()
    # the revisions are different initialisations: their head scores differ
    assert not np.allclose(states["prev_token_max"].sel(layer=[1, 2]).values[0],
                           states["prev_token_max"].sel(layer=[1, 2]).values[1])
    assert "memorisation_gap" not in states  # not a train-tiny model


def test_encoder_checkpoints_skip_head_scores_with_a_log_line(tmp_path, caplog):
    from brainalign.dynamics.internal import is_causal_lm
    from brainalign.features.testing import tiny_checkpoint
    from brainalign.sweep.analyze import _circuit_states
    from brainalign.sweep.run import Checkpoint

    bert = tiny_checkpoint(tmp_path / "bert", "bert")
    neox = tiny_checkpoint(tmp_path / "neox", "gpt_neox")
    assert not is_causal_lm(bert) and is_causal_lm(neox)
    plan = SimpleNamespace(config=SimpleNamespace(model=SimpleNamespace(trust_remote_code=False)))
    with caplog.at_level(logging.INFO, logger="brainalign"):
        out = _circuit_states(plan, [Checkpoint("bert", str(bert), None, 1.0, 10.0)], ["some text"], {"bert": 10.0})
    assert out is None and "not a causal language model" in caplog.text


def test_state_settings_are_part_of_the_analysis_cache_key(tiny_sweep, monkeypatch):
    import brainalign.sweep.analyze as an

    store = tiny_sweep.root / "results.zarr"
    monkeypatch.setenv("BRAINALIGN_CACHE", str(tiny_sweep.root / "cache"))
    sweep = an.Sweep(store)
    before = an._analysis_cache(sweep, sweep.results, 1500, False)
    monkeypatch.setitem(an.STATE_SETTINGS, "probe", [an.PROBE_ITEMS_PER_KIND + 1, an.PROBE_NEW_TOKENS])
    assert an._analysis_cache(sweep, sweep.results, 1500, False) != before
    assert set(STATE_CURVES) >= {"induction_max", "instruction_following", "memorisation_gap"}


def test_the_sweep_stores_its_downstream_copy_and_refuses_unmatched_files(tiny_sweep, tmp_path):
    from brainalign import ValidationError
    from brainalign.sweep.downstream import stored_downstream

    store = tiny_sweep.root / "results.zarr"
    copy = stored_downstream(store)
    assert copy is not None and list(copy.checkpoint.values) == tiny_sweep.names
    np.testing.assert_array_equal(copy["toy"].values, [0.25] * 3 + [0.75] * (len(tiny_sweep.names) - 3))
    # the files gone (a store received from someone else): the copy still gives the curves
    moved = tiny_sweep.root / "downstream.csv"
    kept = moved.with_suffix(".bak")
    moved.rename(kept)
    try:
        a = analyze(store, internal=False, n_boot=20)
        assert a["downstream"] is not None and "toy" in a["downstream"]
    finally:
        kept.rename(moved)
    # a result for a checkpoint this sweep does not have: refused before the store exists
    bad = tmp_path / "bad.csv"
    pd.DataFrame({"checkpoint": ["checkpoint-99999"], "task": "toy", "metric": "acc", "value": [0.5]}).to_csv(bad, index=False)
    cfg = _config(tmp_path, {"name": str(tiny_sweep.tiny.out_dir)}, downstream={"path": str(bad)})
    with pytest.raises(ValidationError, match="bad.csv"):
        run(cfg, progress=False)
    assert not (tmp_path / "results.zarr").exists()


def test_the_report_shows_downstream_curves_their_phases_and_the_cooccurrence_table(tiny_sweep, tmp_path):
    """The acceptance of a run config with downstream: curves, phases and co-occurrence in the report."""
    import re

    from brainalign.sweep.analyze import report

    a = tiny_sweep.analysis
    out = report(tiny_sweep.root / "results.zarr", tmp_path / "report.html", figures_dir=tmp_path / "figs", movie=False)
    html = out.read_text()
    assert "<section id='downstream'>" in html and (tmp_path / "figs" / "downstream.png").stat().st_size > 5000
    # the downstream task's phases are in its section, as detected (6 checkpoints on the log axis)
    import html as html_mod

    section = re.search(r"<section id='downstream'>(.*?)</section>", html, re.S).group(1)
    toy = a["state_phases"]["toy"]
    assert html_mod.escape(f"toy: {toy.pattern}") in section
    assert ("change (step amplitude" in section) == bool(toy.transitions)  # its transitions' table, when it has any
    co = a["cooccurrence"]
    found = re.search(r"<section id='cooccurrence'>(.*?)</section>", html, re.S)
    if len(co):  # a brain-alignment transition exists: its row is in the table
        assert found.group(1).count("<tr>") >= len(co) + 1 and str(co.iloc[0]["roi"]) in found.group(1)
    elif any(p.transitions for p in a["state_phases"].values()):  # nothing of the brain's to set them against
        assert "Not computed:" in found.group(1) and "<table" not in found.group(1)
    else:  # no transition on either side: no section, and the report does not pretend one
        assert found is None
