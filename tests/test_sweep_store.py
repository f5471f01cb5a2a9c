import json

import numpy as np
import pytest
import xarray as xr

from brainalign import ValidationError
from brainalign.sweep import IncompatibleStoreError, ResultsStore, load_config

CONFIG = """\
dataset:
  name: simulated
  subjects: [sim01]
model:
  name: /tmp/model
  revisions: [checkpoint-1, checkpoint-10]
layers: all
encoding:
  n_folds: 3
  alphas: {logspace: [0, 4, 5]}
"""


def test_config_defaults_and_values(tmp_path):
    p = tmp_path / "run.yaml"
    p.write_text(CONFIG)
    cfg = load_config(p)
    assert cfg.encoding.n_folds == 3
    np.testing.assert_allclose(cfg.encoding.alpha_values(), np.logspace(0, 4, 5))
    assert cfg.executor.kind == "local" and cfg.features.context_tokens == 512
    assert cfg.resolve_layers(4) == [0, 1, 2, 3, 4]
    cfg2 = load_config({**cfg.model_dump(mode="json"), "layers": {"depths": [0.5, 1.0]}})
    assert cfg2.resolve_layers(6) == [3, 6]


@pytest.mark.parametrize(
    "edit,expected",
    [
        (("  n_folds: 3", "  n_fold: 3"), r"run.yaml, line 9: encoding.n_fold: unknown key"),
        (("layers: all", "layers: some"), r"run.yaml, line 7: layers: "),
        (("  n_folds: 3", "  n_folds: 1"), r"run.yaml, line 9: encoding.n_folds: Input should be greater than or equal to 2"),
        (("dataset:\n  name: simulated\n", "dataset:\n"), r"run.yaml, line 1: dataset"),
    ],
)
def test_config_errors_name_key_and_line(tmp_path, edit, expected):
    p = tmp_path / "run.yaml"
    p.write_text(CONFIG.replace(*edit))
    with pytest.raises(ValidationError, match=expected):
        load_config(p)


def _create(store, force=False, hash_="h1"):
    coords = {
        "checkpoint": np.array(["a", "b", "c"]),
        "tokens": ("checkpoint", np.array([1.0, 10.0, 100.0])),
        "layer": np.array([0, 1]),
        "target": np.arange(4),
        "hemi": ("target", np.array(["L", "L", "R", "R"])),
    }
    variables = {"score": (("checkpoint", "layer", "target"), "float32"), "lm_loss": (("checkpoint",), "float32")}
    return store.create(coords, variables, attrs={"config": {"x": 1}}, layout_key={"hash": hash_}, force=force)


def test_store_regions_and_markers(tmp_path):
    store = ResultsStore(tmp_path / "r.zarr")
    assert _create(store) is True
    assert _create(store) is False  # same layout: reused
    assert not store.done("b", "h1")
    region = xr.Dataset({"score": (("layer", "target"), np.arange(8, dtype="float32").reshape(2, 4)), "lm_loss": ((), np.float32(3.5))})
    store.write_region("b", region, "h1", {"seconds": 1.0})
    assert store.done("b", "h1") and not store.done("a", "h1")
    ds = store.load()
    np.testing.assert_array_equal(ds.score.sel(checkpoint="b").values, np.arange(8).reshape(2, 4))
    assert np.isnan(ds.score.sel(checkpoint="a").values).all()
    assert ds.done.values.tolist() == [False, True, False]
    assert ds.attrs["config"] == {"x": 1} and list(ds.hemi.values) == ["L", "L", "R", "R"]
    assert json.loads((store.path / ".brainalign/done/b.json").read_text())["seconds"] == 1.0
    with pytest.raises(IncompatibleStoreError, match="region 'b' was made with other settings"):
        store.done("b", "h2")
    with pytest.raises(IncompatibleStoreError, match="hash differ.*--force"):
        _create(store, hash_="h2")
    assert _create(store, hash_="h2", force=True) is True
    assert not store.done("b")


def test_region_without_marker_is_not_done(tmp_path):
    store = ResultsStore(tmp_path / "r.zarr")
    _create(store)
    region = xr.Dataset({"score": (("layer", "target"), np.ones((2, 4), "float32")), "lm_loss": ((), np.float32(1))})
    store.write_region("a", region, "h1")
    (store.path / ".brainalign/done/a.json").unlink()  # as if killed between data and marker
    assert not store.done("a", "h1")
    assert store.load().done.values.tolist() == [False, False, False]


def test_slurm_job_script_from_config():
    pytest.importorskip("dask_jobqueue")
    from brainalign.sweep.run import slurm_cluster

    cfg = load_config({
        "dataset": {"name": "simulated"},
        "model": {"name": "m"},
        "executor": {"kind": "slurm", "slurm": {"queue": "gpu", "cores": 8, "memory": "32GB", "gpus": 1,
                                                 "walltime": "02:00:00", "job_extra_directives": ["--account=lab"],
                                                 "scheduler_options": {"host": "127.0.0.1", "dashboard_address": "127.0.0.1:0"}}},
    })
    cluster = slurm_cluster(cfg.executor)
    try:
        script = cluster.job_script()
    finally:
        cluster.close()
    for line in ("#SBATCH -p gpu", "#SBATCH --cpus-per-task=8", "#SBATCH -t 02:00:00", "#SBATCH --gres=gpu:1", "#SBATCH --account=lab"):
        assert line in script, line
    assert "--resources GPU=1" in script and "--nthreads 8" in script and "tcp://127.0.0.1:" in script
