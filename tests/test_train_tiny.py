import argparse
import json

import numpy as np
import pytest
import torch

from brainalign import DataNotFoundError, ValidationError
from brainalign.training import checkpoint_steps, read_corpus, train_tiny

_WORDS = "the a river boat night light keeper map orchard violin tunnel market walked saw said quietly old new".split()


def _corpus(n_docs=6, n_words=700, seed=0):
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(_WORDS, n_words)) + "." for _ in range(n_docs)]


SMALL = dict(n_layers=1, hidden=32, heads=2, seq_len=32, steps=24, batch_size=4, checkpoints=5, vocab_size=300)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    n = torch.get_num_threads()
    out = tmp_path_factory.mktemp("tiny") / "run"
    r = train_tiny(_corpus(), out, **SMALL)
    assert torch.get_num_threads() == n  # restored
    return r


def test_checkpoint_steps():
    assert checkpoint_steps(1000, 5) == [0, 1, 10, 100, 1000]
    assert checkpoint_steps(24, 5) == [0, 1, 3, 8, 24]
    assert checkpoint_steps(3, 10) == [0, 1, 2, 3]
    with pytest.raises(ValidationError):
        checkpoint_steps(0, 5)


def test_run_writes_hf_checkpoints_and_log(run):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert list(run.checkpoints) == ["checkpoint-0", "checkpoint-1", "checkpoint-3", "checkpoint-8", "checkpoint-24"]
    assert run.tokens["checkpoint-8"] == 8 * 4 * 32
    last = run.checkpoints["checkpoint-24"]
    assert (last / "model.safetensors").is_file() and not list(last.glob("*.bin"))
    tok = AutoTokenizer.from_pretrained(last)
    model = AutoModelForCausalLM.from_pretrained(last)
    assert model.config.model_type == "gpt_neox" and model.config.num_hidden_layers == 1
    ids = tok("the river boat", return_tensors="pt")["input_ids"]
    assert tok.decode(ids[0]) == "the river boat" and ids.max() < model.config.vocab_size
    state = json.loads((last / "trainer_state.json").read_text())
    assert state["global_step"] == 24 and state["num_input_tokens_seen"] == 24 * 4 * 32
    log = json.loads((run.out_dir / "training_log.json").read_text())
    assert log["complete"] and log["tokens_per_step"] == 128
    # texts passed directly: the log says so and counts their words
    assert log["corpus"] == {"source": "texts", "files": [], "documents": 6, "words": 6 * 700}
    df = run.to_frame()
    assert {"train_loss", "heldout_loss", "gap", "param_norm"} <= set(df.columns)
    # learning happened: training loss falls well below its untrained value (~log V)
    assert df["train_loss"].iloc[-1] < df["train_loss"].iloc[0] - 1.0
    assert df["param_norm"].iloc[-1] != df["param_norm"].iloc[0]
    np.testing.assert_allclose(df["gap"], df["heldout_loss"] - df["train_loss"])
    assert not list(run.out_dir.glob(".*"))  # no temp leftovers


def test_deterministic_and_reused(run, tmp_path):
    from safetensors.numpy import load_file

    again = train_tiny(_corpus(), tmp_path / "again", **SMALL)
    a = load_file(run.checkpoints["checkpoint-24"] / "model.safetensors")
    b = load_file(again.checkpoints["checkpoint-24"] / "model.safetensors")
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    # the finished run is reused, not retrained
    mtime = (run.out_dir / "training_log.json").stat().st_mtime_ns
    same = train_tiny(_corpus(), run.out_dir, **SMALL)
    assert same.log == run.log and (run.out_dir / "training_log.json").stat().st_mtime_ns == mtime
    # another configuration in the same folder needs overwrite=True
    with pytest.raises(ValidationError, match="overwrite"):
        train_tiny(_corpus(), tmp_path / "again", **{**SMALL, "steps": 10})
    other = train_tiny(_corpus(), tmp_path / "again", overwrite=True, **{**SMALL, "steps": 10})
    assert sorted(p.name for p in (tmp_path / "again").glob("checkpoint-*")) == sorted(other.checkpoints)


def test_model_states_on_saved_checkpoints(run):
    from brainalign.dynamics.internal import model_states

    ds = model_states(run.checkpoints, texts=_corpus(1, 400, seed=5), seq_len=8, n_seqs=4)
    assert ds.sizes == {"checkpoint": 5, "layer": 1, "head": 2}
    np.testing.assert_array_equal(ds["tokens"].values, [0, 128, 384, 1024, 3072])
    assert np.isfinite(ds["icl_score"]).all()


def test_corpus_input(tmp_path):
    f = tmp_path / "c.txt"
    f.write_text("hello there")
    assert read_corpus(f) == ["hello there"]
    assert read_corpus(str(tmp_path)) == ["hello there"]
    assert read_corpus("just some text") == ["just some text"]
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "d.txt").write_text("one two three")
    from brainalign.training.tiny import describe_corpus

    info = describe_corpus(tmp_path, read_corpus(tmp_path))
    assert info == {"source": str(tmp_path.resolve()), "files": ["c.txt", "sub/d.txt"], "documents": 2, "words": 5}
    with pytest.raises(DataNotFoundError, match="does not exist"):
        read_corpus(str(tmp_path / "missing.txt"))
    with pytest.raises(ValidationError, match="empty"):
        read_corpus(["  "])
    with pytest.raises(ValidationError, match="too small"):
        train_tiny("a tiny corpus", tmp_path / "x", **SMALL)
    assert not (tmp_path / "x" / "training_log.json").exists()


def test_cli(tmp_path, capsys):
    from brainalign.training._cli import register_train_tiny

    parser = argparse.ArgumentParser()
    register_train_tiny(parser.add_subparsers(dest="command"))
    f = tmp_path / "corpus.txt"
    f.write_text("\n".join(_corpus(3, 400)))
    args = parser.parse_args(["train-tiny", str(f), "-o", str(tmp_path / "o"), "--steps", "3", "--checkpoints", "3",
                              "--layers", "1", "--hidden", "16", "--heads", "2", "--seq-len", "16", "--batch-size", "2"])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "checkpoint-3" in out and "training_log.json" in out
