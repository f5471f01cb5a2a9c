"""End-to-end sweeps: resume after SIGKILL, Dask equals in-process, errors before work."""

import importlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import yaml

from brainalign import ValidationError
from brainalign.sweep import ResultsStore, Sweep, make_plan, run

PROVENANCE_VARS = ["task_seconds", "task_peak_rss_mb"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A tiny GPT-NeoX with 5 log-spaced checkpoints (a few seconds on CPU)."""
    from brainalign.datasets import _corpus
    from brainalign.training import train_tiny

    out = tmp_path_factory.mktemp("tiny")
    return train_tiny(_corpus.stories_dir(), out / "model", n_layers=2, hidden=32, heads=2, seq_len=32,
                      steps=30, batch_size=4, checkpoints=5, seed=0)


def _config(tmp_path: Path, model_dir: Path, store: str = "results.zarr", **over) -> dict:
    cfg = {
        "dataset": {"name": "simulated", "options": {"space": 400, "stories": 4, "features": "random:8", "n_subjects": 2, "snr": 2.0}},
        "model": {"name": str(model_dir)},
        "layers": "all",
        "features": {"context_tokens": 32, "batch_size": 8},
        "encoding": {"alphas": {"logspace": [0, 4, 5]}, "n_folds": 3},
        "output": {"store": str(tmp_path / store)},
    }
    for k, v in over.items():
        cfg[k] = {**cfg.get(k, {}), **v} if isinstance(v, dict) else v
    return cfg


def _values(path) -> xr.Dataset:
    ds = Sweep(path).results
    return ds.drop_vars(PROVENANCE_VARS).drop_attrs()


def test_plan_validates_before_any_work(tmp_path, tiny_run):
    cfg = _config(tmp_path, tiny_run.out_dir)
    plan = make_plan(cfg)
    assert [c.label for c in plan.checkpoints] == list(tiny_run.checkpoints)
    assert plan.layers == [0, 1, 2] and plan.subjects == ["sim01", "sim02"]
    np.testing.assert_array_equal([c.tokens for c in plan.checkpoints], list(tiny_run.tokens.values()))

    bad = _config(tmp_path, tiny_run.out_dir, model={"revisions": ["checkpoint-1", "checkpoint-999999"]})
    with pytest.raises(ValidationError, match=r"model.revisions: \['checkpoint-999999'\] not found"):
        run(bad)
    bad = _config(tmp_path, tiny_run.out_dir, dataset={"subjects": ["sim01", "sim07"]})
    with pytest.raises(ValidationError, match=r"dataset.subjects: .*no subject 'sim07'"):
        run(bad)
    bad = _config(tmp_path, tiny_run.out_dir, layers=[0, 9])
    with pytest.raises(ValidationError, match=r"layers: \[9\] out of range"):
        run(bad)
    bad = _config(tmp_path, tiny_run.out_dir, encoding={"n_folds": 4})
    with pytest.raises(ValidationError, match=r"encoding.n_folds: 4 folds need at least as many training stories, but subject sim01 has 3"):
        run(bad)
    bad = _config(tmp_path, tiny_run.out_dir, encoding={"n_fold": 3})
    with pytest.raises(ValidationError, match=r"encoding.n_fold: unknown key"):
        run(bad)
    assert not (tmp_path / "results.zarr").exists()  # nothing was started


def test_sweep_results_are_complete_and_sensible(tmp_path, tiny_run):
    sweep = run(_config(tmp_path, tiny_run.out_dir), progress=False)
    ds = sweep.results
    assert ds.done.all()
    from brainalign.datasets import load
    from brainalign.encoding.significance import sign_pvalues

    data = load("simulated", **_config(tmp_path, tiny_run.out_dir)["dataset"]["options"])
    n_test = sum(data.stories[s].n_trs for s in data.test_stories)
    assert dict(ds.sizes) == {"checkpoint": 5, "layer": 3, "subject": 2, "target": 400, "roi": 1, "boot": 200,
                              "term": n_test - len(data.test_stories)}
    # the ROI sign test's terms add up to the ROI-mean r (z-scored test story: no fixed part)
    np.testing.assert_allclose(ds.roi_null.sum("term").values, ds.roi_score.values, atol=2e-3)
    assert np.isfinite(sign_pvalues(ds.roi_null.values.reshape(-1, ds.sizes["term"]).T)).all()
    assert np.isfinite(ds.score.values).all() and np.isfinite(ds.alpha.values).all()
    assert list(ds.tokens.values) == sorted(ds.tokens.values)
    np.testing.assert_allclose(ds.depth.values, [0, 0.5, 1.0])
    np.testing.assert_allclose(ds.roi_score.sel(roi="whole_cortex").values, ds.score.mean("target").values, rtol=1e-5)
    assert ds.attrs["config"]["model"]["name"] == str(tiny_run.out_dir)
    assert "himalaya" in ds.attrs["package_versions"] and np.all(ds.task_seconds.values > 0)
    # cheap internal metrics of the same pass: the LM's loss on the stories falls with training
    assert np.isfinite(ds.feature_norm.values).all() and (ds.feature_norm.values > 0).all()
    assert ds.lm_loss.values[-1] < ds.lm_loss.values[0]
    # noise ceilings from the test story's repeats, beside the scores: high where the
    # simulation planted signal, low elsewhere
    truth = data.ground_truth
    for subj in ("sim01", "sim02"):
        c, planted = ds.ceiling.sel(subject=subj).values, truth.responsive[subj]
        assert np.isfinite(c[planted]).all() and c[planted].mean() > 0.6
        # CCmax is undefined (NaN) where the estimated signal power is negative: noise
        assert np.median(np.nan_to_num(c[~planted], nan=0.0)) < 0.2
    # a second run finds everything done and changes nothing
    before = _values(sweep.path)
    run(_config(tmp_path, tiny_run.out_dir), progress=False)
    xr.testing.assert_identical(before, _values(sweep.path))


def test_incompatible_rerun_is_refused(tmp_path, tiny_run, capsys):
    run(_config(tmp_path, tiny_run.out_dir, model={"revisions": ["checkpoint-0", "checkpoint-1"]}), progress=False)
    other = _config(tmp_path, tiny_run.out_dir, model={"revisions": ["checkpoint-0", "checkpoint-1"]}, encoding={"n_folds": 2})
    with pytest.raises(ValidationError, match=r"other settings \(encoding.n_folds: 3 -> 2\).*--force"):
        run(other, progress=False)
    # the dry run refuses it the same way, naming the setting, and writes nothing
    import yaml

    from brainalign.cli import main

    path = tmp_path / "other.yaml"
    path.write_text(yaml.safe_dump(other))
    done = lambda: sorted((p.name, p.read_text()) for p in (tmp_path / "results.zarr" / ".brainalign" / "done").iterdir())
    before = done()
    capsys.readouterr()
    assert main(["run", str(path), "--dry-run"]) == 2
    assert "other settings (encoding.n_folds: 3 -> 2)" in capsys.readouterr().err
    assert done() == before
    # a store keyed by an older hash formula, same settings: the dry run counts its done
    # checkpoints and leaves the re-keying to the run
    from brainalign.sweep import ResultsStore

    store = ResultsStore(tmp_path / "results.zarr")
    new_hash = store.layout()["hash"]
    store.rehash(new_hash, "0123456789abcdef")
    same = tmp_path / "same.yaml"
    same.write_text(yaml.safe_dump(_config(tmp_path, tiny_run.out_dir, model={"revisions": ["checkpoint-0", "checkpoint-1"]})))
    rekeyed = done()
    assert main(["run", str(same), "--dry-run"]) == 0
    assert "checkpoints (2, 0 to run):" in capsys.readouterr().out
    assert done() == rekeyed and store.layout()["hash"] == "0123456789abcdef"
    run(_config(tmp_path, tiny_run.out_dir, model={"revisions": ["checkpoint-0", "checkpoint-1"]}), progress=False)
    assert store.layout()["hash"] == new_hash  # the run re-keys it, and finds everything done
    run(other, force=True, progress=False)
    assert Sweep(tmp_path / "results.zarr").results.attrs["config"]["encoding"]["n_folds"] == 2


def test_sigkill_then_resume_equals_uninterrupted(tmp_path, tiny_run):
    cfg = _config(tmp_path, tiny_run.out_dir, store="killed.zarr")
    cfg_path = tmp_path / "run.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "brainalign.cli", "run", str(cfg_path), "--no-report"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    done_dir = tmp_path / "killed.zarr" / ".brainalign" / "done"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if done_dir.is_dir() and len(list(done_dir.glob("*.json"))) >= 2:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    store = ResultsStore(tmp_path / "killed.zarr")
    n_done = len(store.done_info())
    assert 0 < n_done < 5, f"the kill should land mid-sweep ({n_done} of 5 regions done)"
    # a region whose data was written but whose marker was not is redone, not trusted:
    # scribble over a done region and drop its marker, as a crash between the two would
    label = next(iter(store.done_info()))
    region = store.open().sel(checkpoint=[label]).load()
    for v in region.data_vars:
        if np.issubdtype(region[v].dtype, np.floating):
            region[v].values[:] = -7.0
    store.write_region(label, region.drop_vars(["checkpoint"]).squeeze("checkpoint"), "stale")
    (store.path / ".brainalign" / "done" / f"{label}.json").unlink()

    resumed = run(cfg, progress=False)
    straight = run(_config(tmp_path, tiny_run.out_dir, store="straight.zarr"), progress=False)
    xr.testing.assert_identical(_values(resumed.path), _values(straight.path))


def test_dask_local_cluster_equals_in_process(tmp_path, tiny_run):
    pytest.importorskip("distributed")
    revs = {"revisions": ["checkpoint-0", "checkpoint-3", "checkpoint-30"]}
    local = run(_config(tmp_path, tiny_run.out_dir, store="local.zarr", model=revs), progress=False)
    dask = run(_config(tmp_path, tiny_run.out_dir, store="dask.zarr", model=revs), executor="dask", workers=2, progress=False)
    xr.testing.assert_identical(_values(local.path), _values(dask.path))
    hosts = {v["pid"] for v in dask.results.attrs["tasks"].values()}
    assert os.getpid() not in hosts  # the work ran in the workers


def test_sweep_over_hub_revisions_offline(tmp_path):
    """Hub checkpoints by revision name, from an offline Hugging Face cache, through the CLI."""
    from brainalign.features.testing import tiny_hub_cache

    root = tmp_path / "hf" / "hub"
    commits = tiny_hub_cache(root, "tiny-org/tiny-neox", ["step100", "step2000", "step300"], arch="gpt_neox",
                             n_layers=2, hidden=32)
    cfg = _config(tmp_path, Path("unused"), store="hub.zarr")
    cfg["model"] = {"name": "tiny-org/tiny-neox", "revisions": {"every": 1}}
    cfg["features"]["context_tokens"] = 16
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(root), "HF_HOME": str(root.parent)}

    def brainalign(config) -> subprocess.CompletedProcess:
        path = tmp_path / "run.yaml"
        path.write_text(yaml.safe_dump(config))
        return subprocess.run([sys.executable, "-m", "brainalign.cli", "run", str(path), "--no-report"],
                              env=env, capture_output=True, text=True, timeout=300)

    out = brainalign(cfg)
    assert out.returncode == 0, out.stderr[-2000:]
    ds = Sweep(tmp_path / "hub.zarr").results
    # revisions in training order, on Pythia's token axis (step x 2,097,152 tokens)
    assert list(ds.checkpoint.values) == ["step100", "step300", "step2000"]
    np.testing.assert_array_equal(ds.tokens.values, [100 * 2097152, 300 * 2097152, 2000 * 2097152])
    assert bool(ds.done.all()) and np.isfinite(ds.score.values).all()
    # a revision the cache does not have fails before any work, naming it
    cfg["model"]["revisions"] = ["step100", "step4000"]
    cfg["output"]["store"] = str(tmp_path / "never.zarr")
    out = brainalign(cfg)
    assert out.returncode == 2 and "model.revisions: ['step4000'] not found in model tiny-org/tiny-neox" in out.stderr
    assert not (tmp_path / "never.zarr").exists()
    # a commit hash (not listed as a ref) is a valid revision too
    cfg["model"]["revisions"] = [commits["step300"]]
    cfg["output"]["store"] = str(tmp_path / "by-commit.zarr")
    out = brainalign(cfg)
    assert out.returncode == 0, out.stderr[-2000:]
    assert list(Sweep(tmp_path / "by-commit.zarr").results.checkpoint.values) == [commits["step300"]]


def test_adding_checkpoints_extends_the_sweep(tmp_path, tiny_run):
    two = {"revisions": ["checkpoint-0", "checkpoint-30"]}
    three = {"revisions": ["checkpoint-0", "checkpoint-3", "checkpoint-30"]}
    first = run(_config(tmp_path, tiny_run.out_dir, store="grow.zarr", model=two), progress=False)
    before = ResultsStore(first.path).done_info()
    grown = run(_config(tmp_path, tiny_run.out_dir, store="grow.zarr", model=three), progress=False)
    after = ResultsStore(grown.path).done_info()
    assert set(after) == {"checkpoint-0", "checkpoint-3", "checkpoint-30"}
    for label in two["revisions"]:  # the regions already done were not redone
        assert after[label]["finished"] == before[label]["finished"]
    res = grown.results
    assert list(res.checkpoint.values) == ["checkpoint-0", "checkpoint-3", "checkpoint-30"]  # training order
    fresh = run(_config(tmp_path, tiny_run.out_dir, store="fresh.zarr", model=three), progress=False)
    xr.testing.assert_identical(_values(grown.path), _values(fresh.path))


# -- issue 15: the features: section reaches features.extract; word_reduction renamed ---------------------
def test_word_reduction_is_read_as_word_state_with_a_warning_and_the_same_hash():
    from brainalign.sweep.config import config_hash, load_config, settings

    base = {"dataset": {"name": "simulated"}, "model": {"name": "gpt2"}}
    with pytest.warns(DeprecationWarning, match="word_reduction is deprecated; use features.word_state"):
        old = load_config({**base, "features": {"word_reduction": "mean"}})
    new = load_config({**base, "features": {"word_state": "mean"}})
    assert old.features.word_state == new.features.word_state == "mean"
    # the hashes the configs had before the rename (stores made then are reused, not refused or re-keyed)
    assert config_hash(old) == config_hash(new) == "6f56809f169c2a37"
    assert config_hash(load_config(base)) == config_hash(load_config({**base, "features": {"float16": False}})) \
        == "368d900be32088da"
    assert settings(load_config(base))["features"] == {"context_tokens": 512, "batch_size": 8, "device": "auto",
                                                       "dtype": "auto", "word_reduction": "last", "cache": True,
                                                       "float16": False}
    # float16 now changes the cached features, so a float16 store made before has another hash
    assert config_hash(load_config({**base, "features": {"float16": True}})) != "ed3946de1c19f37e"
    with pytest.raises(ValidationError, match="word_reduction .* and word_state .* disagree"):
        load_config({**base, "features": {"word_reduction": "mean", "word_state": "last"}})


def test_features_float16_reaches_the_feature_cache(tmp_path, tiny_run):
    from brainalign.config import cache_dir

    revs = {"revisions": ["checkpoint-30"]}
    run(_config(tmp_path, tiny_run.out_dir, store="f16.zarr", model=revs, features={"float16": True}), progress=False)
    f16 = {np.load(p, mmap_mode="r").dtype for p in (cache_dir() / "features").rglob("L*.npy")}
    assert f16 == {np.dtype("float16")}
    run(_config(tmp_path, tiny_run.out_dir, store="f32.zarr", model=revs), progress=False)
    # float16: false (the default) wants float32 features: the float16 layers are computed again
    f32 = {np.load(p, mmap_mode="r").dtype for p in (cache_dir() / "features").rglob("L*.npy")}
    assert f32 == {np.dtype("float32")}


@pytest.mark.parametrize("test", ["sign", "none"])
def test_store_variables_and_layout_key_are_those_of_before_the_registry(tmp_path, tiny_run, test):
    """The store's variables come from encoding.SCORE_VARIABLES now; a store made before is still reused."""
    from brainalign.sweep.run import _variables

    full, roi = ("checkpoint", "layer", "subject", "target"), ("checkpoint", "layer", "subject", "roi")
    expected = {  # what _variables listed by hand before it was read from the registry
        "score": (full, "float32"), "r2": (full, "float32"), "alpha": (full, "float32"),
        "cv_score": (full, "float32"), "roi_score": (roi, "float32"), "roi_cv_score": (roi, "float32"),
        "roi_boot": ((*roi, "boot"), "float32"), "roi_null": ((*roi, "term"), "float32"),
        "feature_norm": (("checkpoint", "layer"), "float32"), "lm_loss": (("checkpoint",), "float32"),
        "task_seconds": (("checkpoint",), "float32"), "task_peak_rss_mb": (("checkpoint",), "float32"),
    }
    if test != "none":
        expected.update(pvalue=(full, "float32"), significant=(full, "bool"))
    plan = make_plan(_config(tmp_path, tiny_run.out_dir, stats={"test": test}))
    assert _variables(plan) == expected
    assert plan.layout_key()["variables"] == {k: list(dims) for k, (dims, _) in sorted(expected.items())}


def test_a_toy_executor_added_through_the_registry_equals_local(tmp_path, tiny_run, capsys):
    """One register_executor call: the config, run(executor=) and the CLI accept it, and it runs the sweep."""
    from brainalign.cli import main
    from brainalign.sweep import EXECUTORS, register_executor, run_checkpoint

    order = []

    def backwards(plan, todo, *, progress, workers):
        order.extend(plan.checkpoints[i].label for i in reversed(todo))
        return [run_checkpoint(plan, i) for i in reversed(todo)]

    revs = {"revisions": ["checkpoint-0", "checkpoint-3", "checkpoint-30"]}
    with pytest.raises(ValidationError, match=r"executor='backwards': Input should be 'local', 'dask' or 'slurm'"):
        run(_config(tmp_path, tiny_run.out_dir, store="none.zarr", model=revs), executor="backwards")
    register_executor("backwards", backwards, describe=lambda ex: "in this process, last checkpoint first")
    try:
        toy = run(_config(tmp_path, tiny_run.out_dir, store="toy.zarr", model=revs, executor={"kind": "backwards"}),
                  progress=False)
        assert order == ["checkpoint-30", "checkpoint-3", "checkpoint-0"]
        local = run(_config(tmp_path, tiny_run.out_dir, store="local.zarr", model=revs), executor="local", progress=False)
        xr.testing.assert_identical(_values(toy.path), _values(local.path))
        path = tmp_path / "run.yaml"
        path.write_text(yaml.safe_dump(_config(tmp_path, tiny_run.out_dir, store="dry.zarr", model=revs)))
        assert main(["run", str(path), "--dry-run", "--executor", "backwards"]) == 0
        assert "executor: backwards (in this process, last checkpoint first)" in capsys.readouterr().out
    finally:
        EXECUTORS.pop("backwards")
    with pytest.raises(SystemExit):  # gone from the CLI's choices with the registry entry
        main(["run", str(path), "--dry-run", "--executor", "backwards"])


def test_run_checkpoint_reads_the_plans_dataset_not_a_process_cache(tmp_path, tiny_run, monkeypatch):
    import pickle

    import brainalign.datasets
    from brainalign.sweep import load_config, run_checkpoint
    run_module = importlib.import_module("brainalign.sweep.run")

    revs = {"revisions": ["checkpoint-30"]}
    cfg = _config(tmp_path, tiny_run.out_dir, store="given.zarr", model=revs)
    ds = run_module.load_dataset(load_config(cfg))

    def no_loading(*args, **kwargs):
        raise AssertionError("the dataset was loaded again")

    monkeypatch.setattr(run_module, "_DATASETS", {})  # an empty process cache, and no way to fill it
    monkeypatch.setattr(brainalign.datasets, "load", no_loading)
    plan = make_plan(cfg, dataset=ds)
    assert plan.dataset() is ds
    assert pickle.loads(pickle.dumps(plan)).loaded is None  # a Dask worker loads it itself
    store = ResultsStore(plan.store_path)
    with store.writer():
        run_module._create_store(plan, store, force=False)
        assert run_checkpoint(plan, 0)["skipped"] is False
    monkeypatch.undo()
    straight = run(_config(tmp_path, tiny_run.out_dir, store="straight.zarr", model=revs), progress=False)
    xr.testing.assert_identical(_values(plan.store_path), _values(straight.path))


def test_cli_run_writes_the_report_and_figures_where_output_says(tmp_path, monkeypatch, capsys):
    from brainalign.cli import main
    from brainalign.sweep import analyze
    run_module = importlib.import_module("brainalign.sweep.run")

    calls = {}
    monkeypatch.setattr(run_module, "run", lambda config, **kw: Sweep(tmp_path / "results.zarr"))
    monkeypatch.setattr(analyze, "report", lambda path, out, **kw: calls.setdefault("report", (Path(out), kw))[0])
    cfg = {"dataset": {"name": "simulated"}, "model": {"name": "gpt2"},
           "output": {"store": str(tmp_path / "results.zarr"), "report": str(tmp_path / "r" / "run.html"),
                      "figures": str(tmp_path / "figs")}}
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["run", str(path)]) == 0
    out, kw = calls.pop("report")
    assert out == tmp_path / "r" / "run.html" and kw["figures_dir"] == tmp_path / "figs"
    assert main(["run", str(path), "--report", str(tmp_path / "cli.html")]) == 0  # --report wins
    assert calls.pop("report")[0] == tmp_path / "cli.html"
    del cfg["output"]["report"], cfg["output"]["figures"]
    path.write_text(yaml.safe_dump(cfg))
    assert main(["run", str(path)]) == 0  # the defaults: next to the store, no figure files
    out, kw = calls.pop("report")
    assert out == tmp_path / "results.html" and kw["figures_dir"] is None


def test_a_float16_store_made_before_float16_was_honoured_is_refused_not_rekeyed(tmp_path, tiny_run):
    import json

    from brainalign.sweep import IncompatibleStoreError

    cfg = _config(tmp_path, tiny_run.out_dir, store="old16.zarr", model={"revisions": ["checkpoint-30"]},
                  features={"float16": True})
    first = run(cfg, progress=False)
    store = ResultsStore(first.path)
    assert store.open().attrs["feature_cache_dtype"] == "float16"

    def as_the_older_version_wrote_it():  # its own hash formula, and no feature_cache_dtype
        meta = first.path / ".brainalign"
        layout = json.loads((meta / "layout.json").read_text())
        (meta / "layout.json").write_text(json.dumps({**layout, "hash": "ed3946de1c19f37e"}))
        for p in (meta / "done").glob("*.json"):
            p.write_text(json.dumps({**json.loads(p.read_text()), "hash": "ed3946de1c19f37e"}))

    as_the_older_version_wrote_it()
    run(cfg, progress=False)  # made by this version (float16 honoured): re-keyed, reused
    assert store.layout()["hash"] == make_plan(cfg).settings_hash
    as_the_older_version_wrote_it()
    store.set_attrs(feature_cache_dtype=None)
    with pytest.raises(IncompatibleStoreError, match="cached the features in float32 anyway"):
        run(cfg, progress=False)
