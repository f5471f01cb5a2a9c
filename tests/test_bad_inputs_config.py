"""Bad input in run configs, manifests, CLI arguments and result files gets a clear error
naming the file, key or argument (issue 12)."""

import json
import os
import stat

import numpy as np
import pytest
import yaml

from brainalign import DataNotFoundError, ValidationError
from brainalign.cli import main
from brainalign.datasets import load, simulate
from brainalign.dynamics.downstream import read_lm_eval
from brainalign.features import extract
from brainalign.features.testing import tiny_checkpoint, tiny_tokenizer
from brainalign.stimulus import Story
from brainalign.sweep import make_plan
from brainalign.sweep.config import RunConfig, check_slurm_available, load_config

WORDS = "so i was walking down the street one evening when i saw an old man".split()
SIM = {"space": 400, "stories": 4, "features": "random:8", "n_subjects": 2, "snr": 2.0}


def _story(name="walk"):
    on = np.arange(len(WORDS)) * 0.35
    return Story(name, WORDS, on, on + 0.3, 2.0, np.arange(3) * 2.0 + 1.0)


def _config(model="org/model", **over) -> dict:
    cfg = {"dataset": {"name": "simulated", "options": dict(SIM)}, "model": {"name": str(model)}}
    cfg.update(over)
    return cfg


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tok):
    """Two tiny one-layer checkpoints in one folder, as a sweep reads them."""
    run = tmp_path_factory.mktemp("run") / "model"
    for i, name in enumerate(["checkpoint-10", "checkpoint-20"]):
        tiny_checkpoint(run / name, "gpt_neox", seed=i, tokenizer=tok, hidden=16, n_layers=1)
    return run


# -- 1. non-UTF-8 YAML ------------------------------------------------------------------
def test_non_utf8_yaml_names_file_line_and_byte(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_bytes(b"dataset:\n  name: simulated\nmodel: {name: caf\xe9/model}\n")
    with pytest.raises(ValidationError, match=rf"{path}, line 3 \(byte 44\): not UTF-8 text"):
        load_config(path)
    manifest = tmp_path / "study.yaml"
    manifest.write_bytes(b"name: \xff\xfestudy\n")
    with pytest.raises(ValidationError, match=rf"{manifest}, line 1 \(byte 6\): not UTF-8"):
        load("manifest", root=manifest)


# -- 2. duplicate YAML keys -------------------------------------------------------------
def test_duplicate_yaml_keys_name_file_key_and_both_lines(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(
        "dataset: {name: simulated}\n"
        "model: {name: org/model}\n"
        "encoding:\n"
        "  n_folds: 3\n"
        "  backend: numpy\n"
        "  n_folds: 5\n"
    )
    with pytest.raises(ValidationError, match=rf"{path}, line 6: .*key 'n_folds' is given twice.*line 4 and on line 6"):
        load_config(path)
    path.write_text("model: {name: org/a}\ndataset: {name: simulated}\nmodel: {name: org/b}\n")
    with pytest.raises(ValidationError, match=r"key 'model' is given twice.*line 1 and on line 3"):
        load_config(path)
    manifest = tmp_path / "study.yaml"
    manifest.write_text("name: a\ntr: 2.0\nname: b\n")
    with pytest.raises(ValidationError, match=rf"{manifest}, line 3: .*'name' is given twice.*line 1 and on line 3"):
        load("manifest", root=manifest)


def test_yaml_merge_keys_and_line_numbers_still_work(tmp_path):
    path = tmp_path / "run.yaml"
    text = (
        "dataset: {name: simulated}\n"
        "model: {name: org/model}\n"
        "stats:\n"
        "  <<: {fdr: 0.1, test: block, permutations: 10}\n"
        "  fdr: 0.2\n"
        "encoding: {n_fold: 3}\n"
    )
    path.write_text(text)
    with pytest.raises(ValidationError, match=rf"{path}, line 6: encoding.n_fold: unknown key"):
        load_config(path)
    path.write_text(text.replace("n_fold:", "n_folds:"))
    cfg = load_config(path)  # a merge key may be overridden: not a duplicate
    assert (cfg.stats.fdr, cfg.stats.permutations, cfg.encoding.n_folds) == (0.2, 10, 3)


def test_an_unknown_key_lists_the_accepted_ones_and_the_nearest(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("dataset: {name: simulated, n_subjects: 1}\nmodel: {name: org/model}\n"
                    "internal_states: [llc]\nllc: {draws: 20, chians: 1}\n")
    with pytest.raises(ValidationError) as exc:
        load_config(path)
    msg = str(exc.value)
    assert (f"{path}, line 4: llc.chians: unknown key (did you mean 'chains'? accepted: lr, n_beta, localization, "
            "chains, draws, batch_size, seed, restrict, sequences, seq_len)") in msg
    # the dataset's own options go under options:, which the list shows
    assert "dataset.n_subjects: unknown key (" in msg and "accepted: name, root, subjects, options)" in msg
    # no near name: the accepted keys alone
    with pytest.raises(ValidationError, match=r"encoding.zzz: unknown key \(accepted: [a-z_, ]*n_folds"):
        load_config(_config(encoding={"zzz": 1}))


def test_internal_states_may_be_one_name_and_an_unused_llc_section_is_warned_about():
    from brainalign.sweep.config import UnusedSettingWarning

    assert load_config(_config(internal_states="weight_norm")).internal_states == ["weight_norm"]
    with pytest.warns(UnusedSettingWarning, match=r"the llc: section has no effect: 'llc' is not in internal_states "
                                                  r"\(weight_norm\)"):
        load_config(_config(internal_states=["weight_norm"], llc={"draws": 20}))
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", UnusedSettingWarning)
        load_config(_config(internal_states=["llc"], llc={"draws": 20}))
        load_config(_config())  # no llc: section, nothing to say
        # a dumped config (a store's) always has an llc: section, of defaults: nothing to say either
        load_config(load_config(_config()).model_dump(mode="json"))


# -- 3. a path-like model name that does not exist ----------------------------------------
@pytest.mark.parametrize("name", ["./models/tiny", "/abs/path/that/does/not/exist", "~/no/such/model", "runs/x/ckpt"])
def test_missing_model_folder_is_named_not_sent_to_the_hub(name):
    with pytest.raises(ValidationError, match=rf"model.name: model folder {name} does not exist"):
        make_plan(_config(name))


def test_missing_model_folder_line_in_yaml_and_hub_ids_still_accepted(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("dataset: {name: simulated}\nmodel:\n  name: ./models/tiny\n")
    load_config(path)  # a config names its model; the folder is looked for when a plan is made (a stored
    # config is read on machines that do not have the model)
    with pytest.raises(ValidationError, match=rf"{path}: model.name: model folder ./models/tiny does not exist "
                                              r"\(looked in .*models/tiny\)"):
        make_plan(path)
    assert load_config(_config("EleutherAI/pythia-160m")).model.name == "EleutherAI/pythia-160m"
    assert load_config(_config("gpt2")).model.name == "gpt2"
    with pytest.raises(DataNotFoundError, match="model folder /abs/path/that/does/not/exist does not exist"):
        extract([_story()], model="/abs/path/that/does/not/exist", cache=False)


# -- 4. devices -------------------------------------------------------------------------
def test_unknown_device_is_refused_in_config_and_extract():
    with pytest.raises(ValidationError, match=r"features.device: device 'tpu' is not one of: auto, cpu, cuda, cuda:N"):
        load_config(_config(features={"device": "tpu"}))
    with pytest.raises(ValidationError, match="device 'cuda:x'"):
        load_config(_config(features={"device": "cuda:x"}))
    for ok in ("auto", "cpu", "cuda", "cuda:1", "mps"):
        assert load_config(_config(features={"device": ok})).features.device == ok
    with pytest.raises(ValidationError, match="device 'tpu' is not one of"):
        extract([_story()], model="org/model", device="tpu", cache=False)


# -- 5. dataset options ---------------------------------------------------------------------
def test_unknown_dataset_option_names_it_and_the_accepted_ones(tmp_path):
    with pytest.raises(ValidationError, match=r"dataset 'simulated': unknown option\(s\) 'snrr'; it accepts: .*\bsnr\b"):
        load("simulated", **SIM, snrr=2.0)
    with pytest.raises(ValidationError, match=r"dataset 'lebel2023': unknown option\(s\) 'smooth'; .*test_stories"):
        load("lebel2023", root=tmp_path, smooth=True)
    with pytest.raises(ValidationError, match=r"dataset 'manifest': unknown option\(s\) 'foo', 'bar'"):
        load("manifest", root=tmp_path / "m.yaml", foo=1, bar=2)


def test_simulate_option_types_are_checked():
    with pytest.raises(ValidationError, match="n_subjects must be an integer, got 2.5"):
        simulate(n_subjects=2.5, space=400, stories=2, features="random:4")
    with pytest.raises(ValidationError, match="snr must be a number, got '2'"):
        simulate(snr="2", space=400, stories=2, features="random:4")
    with pytest.raises(ValidationError, match="n_repeats must be >= 0"):
        simulate(n_repeats=-1, space=400, stories=2, features="random:4")


# -- 6. HF Trainer checkpoints: the tokenizer is in the parent folder ----------------------
def test_trainer_checkpoint_uses_the_parent_folders_tokenizer(tmp_path, tok):
    run = tmp_path / "run"
    ckpt = tiny_checkpoint(run / "checkpoint-500", "gpt2", tokenizer=tok, hidden=16, n_layers=1)
    for f in list(ckpt.iterdir()):  # Trainer keeps config + weights in the checkpoint, the tokenizer in run/
        if f.name not in ("config.json", "model.safetensors", "generation_config.json"):
            f.unlink()
    tok.save_pretrained(run)
    st = _story()
    direct = extract([st], model=ckpt, cache=False)
    by_revision = extract([st], model=run, revision="checkpoint-500", cache=False)
    explicit = extract([st], model=ckpt, tokenizer=tok, cache=False)
    np.testing.assert_array_equal(direct.get("walk", 1), explicit.get("walk", 1))
    np.testing.assert_array_equal(by_revision.get("walk", 1), explicit.get("walk", 1))
    for f in run.iterdir():
        if f.is_file():
            f.unlink()
    with pytest.raises(DataNotFoundError, match=r"checkpoint-500 has no tokenizer files .* neither has its parent"):
        extract([st], model=ckpt, cache=False)


# -- 7. lm-evaluation-harness results --------------------------------------------------------
def test_lm_eval_empty_results_and_string_values(tmp_path):
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps({"results": {}, "config": {"model_args": "revision=step1"}}))
    with pytest.raises(ValidationError, match=rf"{empty} holds no metric values \('results' is empty\)"):
        read_lm_eval(empty)
    strings = tmp_path / "strings.json"
    strings.write_text(json.dumps({"results": {"piqa": {"alias": "piqa", "acc,none": "0.61", "acc_stderr,none": "0.01",
                                                        "acc_norm,none": 0.5, "acc_norm_stderr,none": "N/A"}},
                                   "config": {"model_args": "revision=step1"}}))
    df = read_lm_eval(strings).set_index("metric")
    assert df.loc["acc", "value"] == 0.61 and df.loc["acc", "stderr"] == 0.01
    assert df.loc["acc_norm", "value"] == 0.5 and np.isnan(df.loc["acc_norm", "stderr"])
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"results": {"piqa": {"acc,none": "high"}}}))
    with pytest.raises(ValidationError, match=rf"{bad}: task 'piqa', metric 'acc,none': value 'high' is not a number"):
        read_lm_eval(bad)


# -- 8. CLI arguments and executor overrides -------------------------------------------------
@pytest.mark.parametrize(("argv", "message"), [
    (["run", "x.yaml", "--workers", "0"], "--workers: must be a positive integer, got 0"),
    (["run", "x.yaml", "--executor", "dask", "--workers", "-2"], "--workers: must be a positive integer"),
    (["run", "x.yaml", "--workers", "two"], "--workers: 'two' is not an integer"),
    (["flatmap", "r.zarr", "--checkpoint", "a", "--layer", "1", "--threshold", "nan"], "--threshold: must be a finite number"),
    (["flatmap", "r.zarr", "--checkpoint", "a", "--layer", "1", "--threshold", "inf"], "--threshold: must be a finite number"),
])
def test_cli_refuses_bad_numbers(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2 and message in capsys.readouterr().err


def test_with_executor_revalidates():
    cfg = load_config(_config())
    with pytest.raises(ValidationError, match=r"workers=0: Input should be greater than 0"):
        cfg.with_executor("dask", 0)
    with pytest.raises(ValidationError, match=r"executor='ray': Input should be 'local', 'dask' or 'slurm'"):
        cfg.with_executor("ray", None)
    new = cfg.with_executor("dask", 3)
    assert isinstance(new, RunConfig) and (new.executor.kind, new.executor.workers) == ("dask", 3)
    assert cfg.executor.kind == "local" and new.source == cfg.source
    assert cfg.with_executor("slurm", 4).executor.slurm.jobs == 4
    assert cfg.with_executor(None, None) is cfg


# -- 9. SLURM without sbatch, and --dry-run ----------------------------------------------------
def _fake_sbatch(folder):
    folder.mkdir(exist_ok=True)
    exe = folder / "sbatch"
    exe.write_text("#!/bin/sh\nexit 1\n")
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR)
    return folder


def test_check_slurm_available(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(ValidationError, match=r"executor.kind: slurm needs the `sbatch` command, which is not on PATH"):
        check_slurm_available()
    monkeypatch.setenv("PATH", str(_fake_sbatch(tmp_path / "bin")))
    check_slurm_available()


def test_dry_run_prints_the_plan_and_runs_nothing(tmp_path, run_dir, capsys):
    store = tmp_path / "results.zarr"
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(_config(run_dir, features={"context_tokens": 32}, encoding={"n_folds": 3},
                                           output={"store": str(store)})))
    assert main(["run", str(path), "--dry-run", "--executor", "dask", "--workers", "3"]) == 0
    out = capsys.readouterr().out
    assert f"store: {store} (new)" in out
    assert "checkpoints (2, 2 to run):\n  checkpoint-10\n  checkpoint-20\n" in out
    assert "layers (2 of 0..1): 0, 1" in out and "subjects (2): sim01, sim02" in out
    assert "executor: dask (3 Dask workers)" in out and "nothing was computed" in out
    assert not store.exists()
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(_config(run_dir, layers=[0, 7], encoding={"n_folds": 3}, output={"store": str(store)})))
    assert main(["run", str(bad), "--dry-run"]) == 2
    assert "layers: [7] out of range" in capsys.readouterr().err
    # a folder the run would refuse is refused by the dry run too
    store.mkdir()
    (store / "notes.txt").write_text("mine")
    assert main(["run", str(path), "--dry-run"]) == 2
    assert "is not a brainalign results store" in capsys.readouterr().err
    assert (store / "notes.txt").read_text() == "mine"


def test_dry_run_slurm_prints_the_job_script_or_says_sbatch_is_missing(tmp_path, run_dir, capsys, monkeypatch):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(_config(
        run_dir, encoding={"n_folds": 3}, output={"store": str(tmp_path / "r.zarr")},
        executor={"kind": "slurm", "slurm": {"cores": 2, "memory": "4GB", "walltime": "00:30:00", "gpus": 1,
                                             "scheduler_options": {"host": "127.0.0.1"}}},
    )))
    monkeypatch.setenv("PATH", os.pathsep.join([str(_fake_sbatch(tmp_path / "bin")), os.environ["PATH"]]))
    assert main(["run", str(path), "--dry-run", "--workers", "2"]) == 0
    out = capsys.readouterr().out
    assert "executor: slurm (2 SLURM jobs)" in out
    assert "#SBATCH -t 00:30:00" in out and "#SBATCH --gres=gpu:1" in out and "--resources GPU=1" in out
    assert not (tmp_path / "r.zarr").exists()
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert main(["run", str(path), "--dry-run"]) == 2
    assert "slurm needs the `sbatch` command" in capsys.readouterr().err
