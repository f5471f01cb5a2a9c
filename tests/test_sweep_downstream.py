"""The run config's downstream: key: validated at load, read onto a sweep's checkpoints,
phase-detected, and lined up with the brain-alignment transitions."""

import json

import numpy as np
import pandas as pd
import pytest

from brainalign.errors import ValidationError
from brainalign.sweep.config import config_hash, load_config
from brainalign.sweep.downstream import downstream_for_plan, downstream_table, store_downstream
from brainalign.sweep.run import Checkpoint

STEPS = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048]
TPS = 1000.0  # tokens per step of these checkpoints
JUMP = 256  # the step where the toy task's accuracy jumps
BASE = {"dataset": {"name": "simulated"}, "model": {"name": "gpt2"}}


def _checkpoints(prefix="step"):
    return [Checkpoint(f"{prefix}{s}", "org/model", f"{prefix}{s}", float(s), s * TPS) for s in STEPS]


def _lm_eval(folder, revision, results, pretrained="org/model", with_revision=True, name=None):
    args = f"pretrained={pretrained}" + (f",revision={revision}" if with_revision else "")
    data = {"results": results, "config": {"model": "hf", "model_args": args}}
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / (name or f"results_{revision}.json")
    path.write_text(json.dumps(data))
    return path


@pytest.fixture
def evals(tmp_path):
    """An lm-eval folder: 'toy' accuracy 0.25 -> 0.75 at step 256 (noise-free), IFEval at
    some checkpoints only (prompt-level strict accuracy, no 'acc')."""
    folder = tmp_path / "evals"
    for s in STEPS:
        res = {"toy": {"alias": "toy", "acc,none": 0.25 + 0.5 * (s >= JUMP), "acc_stderr,none": 0.01}}
        if s >= 64:
            res["ifeval"] = {"prompt_level_strict_acc,none": s / 4096, "inst_level_loose_acc,none": 0.5}
        _lm_eval(folder, f"step{s}", res)
    return folder


# -- the config key ---------------------------------------------------------------------------
def test_downstream_key_is_validated_at_load_naming_key_and_file(tmp_path, evals):
    with pytest.raises(ValidationError, match=r"downstream\.path: .*nowhere\.csv does not exist"):
        load_config({**BASE, "downstream": str(tmp_path / "nowhere.csv")})
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValidationError, match=r"downstream\.path: folder .*empty holds no lm-evaluation-harness"):
        load_config({**BASE, "downstream": {"path": str(empty)}})
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ValidationError, match=r"downstream\.path: .*notes\.txt is neither"):
        load_config({**BASE, "downstream": [str(evals), str(tmp_path / "notes.txt")]})
    with pytest.raises(ValidationError, match=r"downstream\.tokens_per_step"):
        load_config({**BASE, "downstream": {"path": str(evals), "tokens_per_step": -1}})
    with pytest.raises(ValidationError, match=r"downstream\.metrc"):
        load_config({**BASE, "downstream": {"path": str(evals), "metrc": "acc"}})
    # short and long forms; paths stored absolute; the settings hash does not change
    short = load_config({**BASE, "downstream": str(evals)})
    long = load_config({**BASE, "downstream": {"path": [str(evals)], "metric": {"toy": "acc"}, "tokens_per_step": 5}})
    assert short.downstream.path == str(evals.resolve()) and short.downstream.metric == "acc"
    assert long.downstream.paths() == [evals.resolve()] and long.downstream.tokens_per_step == 5
    assert config_hash(short) == config_hash(load_config(BASE)) == config_hash(long)


def test_yaml_config_error_names_the_file_line_and_key(tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text("dataset: {name: simulated}\nmodel: {name: gpt2}\ndownstream: missing/evals\n")
    with pytest.raises(ValidationError, match=r"run\.yaml, line 3: downstream\.path: .*missing/evals does not exist"):
        load_config(cfg)


# -- reading results onto the checkpoints -------------------------------------------------------
def test_lm_eval_folder_on_the_sweep_checkpoints(evals):
    ds = downstream_table({"path": str(evals)}, _checkpoints())
    assert list(ds.checkpoint.values) == [f"step{s}" for s in STEPS]
    np.testing.assert_array_equal(ds.tokens.values, np.array(STEPS) * TPS)
    np.testing.assert_array_equal(ds.step.values, STEPS)
    np.testing.assert_allclose(ds["toy"].values, [0.25 + 0.5 * (s >= JUMP) for s in STEPS])
    assert ds["toy"].attrs["metric"] == "acc" and ds["toy"].attrs["role"] == "downstream"
    # IFEval has no 'acc': its prompt-level strict accuracy, NaN where it was not run
    assert ds["ifeval"].attrs["metric"] == "prompt_level_strict_acc"
    want = [s / 4096 if s >= 64 else np.nan for s in STEPS]
    np.testing.assert_allclose(ds["ifeval"].values, want)
    assert len(ds.attrs["sources"]) == len(STEPS)


def test_results_that_match_no_checkpoint_are_an_error_naming_the_file(evals):
    stray = _lm_eval(evals, "step999", {"toy": {"acc,none": 0.5}})
    with pytest.raises(ValidationError, match=r"1 result\(s\) match no checkpoint of the sweep: .*results_step999\.json "
                                              r"\(checkpoint 'step999'\)"):
        downstream_table(str(evals), _checkpoints())
    stray.unlink()
    with pytest.raises(ValidationError, match="task 'toy' has no metric 'f1'"):
        downstream_table({"path": str(evals), "metric": {"toy": "f1"}}, _checkpoints())
    # IFEval keeps its own metric whatever the default; a task without the metric is left out
    assert list(downstream_table({"path": str(evals), "metric": "bleu"}, _checkpoints()).data_vars) == ["ifeval"]
    csv = evals.parent / "toy.csv"
    pd.DataFrame({"checkpoint": ["step8"], "task": "toy", "metric": "acc", "value": [0.5]}).to_csv(csv, index=False)
    with pytest.raises(ValidationError, match=r"no task has the metric 'bleu' \(metrics: \['acc'\]\)"):
        downstream_table({"path": str(csv), "metric": "bleu"}, _checkpoints())


def test_local_checkpoint_folders_match_by_the_pretrained_path_or_the_step(tmp_path):
    folder = tmp_path / "evals"
    # lm-eval on a local folder: model_args has only pretrained=/runs/tiny/checkpoint-8
    _lm_eval(folder, None, {"toy": {"acc,none": 0.3}}, pretrained="/runs/tiny/checkpoint-8", with_revision=False,
             name="a.json")
    ckpts = [Checkpoint(f"checkpoint-{s}", f"/runs/tiny/checkpoint-{s}", None, float(s), s * TPS) for s in STEPS]
    ds = downstream_table(str(folder), ckpts)
    assert ds["toy"].sel(checkpoint="checkpoint-8").item() == pytest.approx(0.3)
    assert int(np.isfinite(ds["toy"].values).sum()) == 1
    # a CSV naming checkpoints by another spelling of the same step
    csv = tmp_path / "d.csv"
    pd.DataFrame({"checkpoint": ["step16", "step32"], "task": "toy", "metric": "acc", "value": [0.1, 0.2]}).to_csv(csv)
    ds = downstream_table(str(csv), ckpts)
    np.testing.assert_allclose(ds["toy"].sel(checkpoint=["checkpoint-16", "checkpoint-32"]).values, [0.1, 0.2])


def test_two_results_for_one_task_and_checkpoint_name_both_files(evals):
    _lm_eval(evals, "step8", {"toy": {"acc,none": 0.9}}, name="again_step8.json")
    with pytest.raises(ValidationError, match=r"several results for task 'toy' at checkpoint 'step8'.*again_step8\.json"):
        downstream_table(str(evals), _checkpoints())


def test_downstream_for_plan_and_from_a_store_config(evals, tmp_path):
    from types import SimpleNamespace

    import xarray as xr

    cfg = load_config({**BASE, "downstream": str(evals)})
    plan = SimpleNamespace(config=cfg, checkpoints=_checkpoints())
    ds = downstream_for_plan(plan)
    assert set(ds.data_vars) == {"toy", "ifeval"}
    assert downstream_for_plan(SimpleNamespace(config=load_config(BASE), checkpoints=_checkpoints())) is None
    # a store without a copy: read from the files its config names, on its done checkpoints
    res = xr.Dataset(coords={"checkpoint": [f"step{s}" for s in STEPS], "tokens": ("checkpoint", np.array(STEPS) * TPS),
                             "step": ("checkpoint", np.array(STEPS, float)), "done": ("checkpoint", np.arange(12) < 5)})
    got = store_downstream(tmp_path / "no-store.zarr", res, cfg.model_dump(mode="json"))
    assert list(got.checkpoint.values) == [f"step{s}" for s in STEPS[:5]]
    # a store with a copy as its zarr group "downstream" uses the copy, not the files
    store = tmp_path / "store.zarr"
    (ds * 0 + 1).to_zarr(store, group="downstream", mode="w")
    got = store_downstream(store, res, {"downstream": {"path": str(tmp_path / "gone")}})
    np.testing.assert_array_equal(got["toy"].values, 1.0)
    # the files gone and no copy: None, with a warning (the analysis goes on)
    assert store_downstream(tmp_path / "no-store.zarr", res, {"downstream": {"path": str(tmp_path / "gone")}}) is None


# -- phases and co-occurrence: known answers ---------------------------------------------------
def test_a_step_in_accuracy_is_a_transition_and_its_cooccurrence_distance(evals):
    from brainalign.dynamics import detect_phases
    from brainalign.dynamics.downstream import nearest_transitions
    from brainalign.sweep.analyze import curve_phases

    ds = downstream_table(str(evals), _checkpoints())
    phases = curve_phases({"toy": ds["toy"]}, n_boot=50)
    (t,) = phases["toy"].transitions
    assert t.kind == "step" and t.direction == "rising"
    # the jump is between steps 128 and 256: the midpoint lies there
    assert 128 * TPS <= t.at <= JUMP * TPS
    # a brain curve rising at step 16: its transition, and the toy task's, 1.0-1.2 decades later
    x = np.array(STEPS) * TPS
    rng = np.random.default_rng(0)
    y = 0.02 + 0.06 / (1 + np.exp(-(np.log10(x) - np.log10(16 * TPS)) * 8))[:, None] + rng.normal(0, 0.001, (len(x), 3))
    brain = detect_phases((x, y), n_boot=50, name="AC", significant=True)
    flat = detect_phases((x, y), n_boot=0, name="V1", significant=False)
    (b,) = brain.transitions
    co = nearest_transitions({"AC": brain, "V1": flat}, {"state": {}, "downstream": phases})
    assert list(co["roi"]) == ["AC"]  # no row for an ROI without significant alignment
    row = co.iloc[0]
    assert row["transition"] == "rise" and row["tokens"] == pytest.approx(b.at)
    assert (row["tokens_lo"], row["tokens_hi"]) == pytest.approx(b.interval)
    assert row["downstream"] == "toy" and row["downstream_tokens"] == pytest.approx(t.at)
    assert row["downstream_distance_log10"] == pytest.approx(np.log10(t.at) - np.log10(b.at))
    assert 0.9 < row["downstream_distance_log10"] < 1.3
    assert row["state"] is None and np.isnan(row["state_distance_log10"])
