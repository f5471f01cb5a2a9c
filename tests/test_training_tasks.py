"""Synthetic tasks with known phases (issue 20): induction heads form on repeated
sequences, and the brain-alignment phase machinery finds their transition."""

import json

import numpy as np
import pytest
import xarray as xr

from brainalign import ValidationError
from brainalign.training import InductionTask, ModularAdditionTask, train_task


def _curve(log, key):
    return xr.DataArray([r[key] for r in log], dims="checkpoint",
                        coords={"checkpoint": [r["name"] for r in log], "tokens": ("checkpoint", [r["tokens"] for r in log])})


def formation(heads):
    """Where the induction heads form: the induction score's first significant rise,
    where it leaves chance. On some seeds the score rises again later, by as much, as
    the heads sharpen (0.18 to 0.47 in two steps 0.3 decade apart on seed 2), while the
    accuracy has already jumped with the first; so the largest rise is not the
    criterion."""
    ups = [t for t in heads.transitions if t.change > 0 and t.p < 0.05]
    assert ups, heads.summary()
    return min(ups, key=lambda t: t.log_at)


@pytest.fixture(scope="module")
def induction_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("induction") / "run"
    return train_task(InductionTask(vocab=32, seq_len=48), out, n_layers=2, hidden=32, heads=2, intermediate=4,
                      steps=1000, batch_size=32, checkpoints=24, lr=3e-3, weight_decay=0.0)


def test_induction_heads_form_and_their_transitions_coincide(induction_run):
    from brainalign.dynamics.internal import model_states
    from brainalign.dynamics.phases import detect_phases

    log = induction_run.log
    # before: chance on the repeated segment (1/32); after: copied from its first occurrence
    assert log[0]["heldout_acc"] < 0.1 and log[-1]["heldout_acc"] > 0.8
    assert log[-1]["train_acc"] > 0.8  # fresh sequences every step: nothing to memorise
    assert abs(log[-1]["memorisation"]) < 0.05
    acc = detect_phases(_curve(log, "heldout_acc"), x="tokens")
    states = model_states(dict(induction_run.checkpoints), tokens=induction_run.tokens)
    ind = states["induction_max"]
    ind = ind.max("layer") if "layer" in ind.dims else ind
    # chance is about 1/32 (attention spread over the context); formed, the heads look back to the repeat
    assert float(ind[-1]) > 0.25 > 5 * float(ind[0])
    heads = detect_phases(ind, x="tokens")
    ups = [t for t in acc.transitions if t.change > 0 and t.p < 0.05]
    assert ups, acc.summary()
    # the accuracy's main rise and the step where the heads form: within 0.2 decade
    a, h = max(ups, key=lambda t: t.change).log_at, formation(heads).log_at
    assert abs(a - h) < 0.2, (a, h)


def test_modular_addition_is_memorised_before_it_generalises(tmp_path):
    run = train_task(ModularAdditionTask(p=23, train_fraction=0.4), tmp_path / "mod", n_layers=1, hidden=32, heads=2,
                     steps=300, checkpoints=10, lr=3e-3, weight_decay=1.0)
    log = run.log
    assert log[-1]["train_acc"] > 0.95  # the training pairs are learned...
    assert max(r["memorisation"] for r in log) > 0.5  # ... long before the held-out ones
    assert all(r["tokens"] == r["step"] * int(round(0.4 * 23 * 23)) * 4 for r in log)
    stored = json.loads((run.out_dir / "training_log.json").read_text())
    assert stored["config"]["loss"] == "the answer"
    assert stored["complete"] and stored["config"]["task"] == {"kind": "modular", "p": 23, "train_fraction": 0.4,
                                                                "split_swaps": False, "name": "modular"}


#: the grokking recipe of examples/grokking.py: a pair and its swap on the same side (so
#: memorising scores 0 on the held-out pairs), weights started 3x larger than the default
#: initialisation and decayed hard (Liu et al. 2023), a constant learning rate
GROK_TASK = ModularAdditionTask(p=23, train_fraction=0.85, split_swaps=True)
GROK_TRAIN = dict(n_layers=1, hidden=64, heads=4, steps=3000, checkpoints=30, lr=1e-2, weight_decay=1.0, init_scale=3.0)


@pytest.mark.slow  # about a minute per seed
@pytest.mark.parametrize("seed", [0, 1])
def test_modular_addition_groks_held_out_accuracy_rises_long_after_training_accuracy(tmp_path, seed):
    from brainalign.dynamics.phases import detect_phases

    log = train_task(GROK_TASK, tmp_path / "grok", seed=seed, **GROK_TRAIN).log
    chance = 1 / GROK_TASK.p
    assert log[0]["train_acc"] < 3 * chance and log[0]["heldout_acc"] < 3 * chance
    # memorised: the training pairs are answered while the held-out ones are not
    assert any(r["train_acc"] > 0.9 and r["heldout_acc"] < chance for r in log)
    # then generalised: held out well above what memorising gives (0) and above chance
    assert np.mean([r["heldout_acc"] for r in log[-5:]]) > 3 * chance
    rises = {}
    for key in ("train_acc", "heldout_acc"):
        ph = detect_phases(_curve(log, key), x="tokens", name=key)
        ups = [t for t in ph.transitions if t.change > 0 and t.p < 0.05]
        assert ups, ph.summary()
        rises[key] = max(ups, key=lambda t: t.change).log_at
    # in that order, at least half a decade of training tokens apart
    assert rises["heldout_acc"] - rises["train_acc"] >= 0.5, rises


def test_init_scale_multiplies_the_initial_weight_matrices(tmp_path):
    from transformers import AutoModelForCausalLM

    kw = dict(n_layers=1, hidden=16, heads=2, steps=1, checkpoints=2)
    plain = train_task(ModularAdditionTask(p=7), tmp_path / "plain", **kw)
    big = train_task(ModularAdditionTask(p=7), tmp_path / "big", init_scale=2.5, **kw)
    a, b = (dict(AutoModelForCausalLM.from_pretrained(r.checkpoints[r.log[0]["name"]]).named_parameters())
            for r in (plain, big))
    assert a.keys() == b.keys()
    scaled = {n for n in a if not torch_allclose(b[n], a[n])}
    # the embeddings, the attention and MLP matrices and the unembedding; not the LayerNorm gains or the biases
    assert {"gpt_neox.embed_in.weight", "lm_head.weight", "gpt_neox.layers.0.attention.query_key_value.weight",
            "gpt_neox.layers.0.mlp.dense_h_to_4h.weight"} <= scaled
    assert not any("layernorm" in n or n.endswith(".bias") for n in scaled), scaled
    for name in scaled:
        assert torch_allclose(b[name], 2.5 * a[name]), name
    cfg = lambda r: json.loads((r.out_dir / "training_log.json").read_text())["config"]
    assert cfg(big)["init_scale"] == 2.5 and "init_scale" not in cfg(plain)  # older runs keep their settings
    # a finished run is reused only with the same init_scale
    assert train_task(ModularAdditionTask(p=7), tmp_path / "plain", init_scale=1.0, **kw).log == plain.log
    with pytest.raises(ValidationError, match="another or an unfinished run"):
        train_task(ModularAdditionTask(p=7), tmp_path / "plain", init_scale=2.5, **kw)
    for bad in (0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValidationError, match="init_scale must be a positive number"):
            train_task(ModularAdditionTask(p=7), tmp_path / "bad", init_scale=bad, **kw)
    assert not (tmp_path / "bad").exists()


def torch_allclose(x, y):
    import torch

    return torch.allclose(x, y, rtol=1e-6, atol=1e-7)


def test_modular_addition_split_keeps_swaps_together():
    """split_swaps: (a, b) and (b, a) on the same side, so commutativity gives nothing
    away; the default split is the random one it always was."""
    task = ModularAdditionTask(p=23, train_fraction=0.85, split_swaps=True)
    d = task.data(seed=0)
    pairs = {side: {(int(a), int(b)) for a, b, *_ in d[side][0]} for side in ("train", "heldout")}
    assert not pairs["train"] & pairs["heldout"] and len(pairs["train"]) + len(pairs["heldout"]) == 23 * 23
    assert all((b, a) in pairs[side] for side in pairs for a, b in pairs[side])
    assert abs(len(pairs["train"]) - 0.85 * 23 * 23) <= 2  # to within one unordered pair
    assert all(((a + b) % 23) == c for a, b, _, c in d["heldout"][0])
    plain = ModularAdditionTask(p=23, train_fraction=0.85).data(seed=0)
    order = np.random.default_rng(0).permutation(23 * 23)
    assert np.array_equal(plain["train"][0][:, 0] * 23 + plain["train"][0][:, 1], order[: int(round(0.85 * 23 * 23))])
    swapped = sum((int(b), int(a)) in {(int(x), int(y)) for x, y, *_ in plain["train"][0]} for a, b, *_ in plain["heldout"][0])
    assert swapped > 0.7 * len(plain["heldout"][0])  # most held-out pairs have their swap trained on


def test_checkpoints_load_and_runs_are_reused(induction_run, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    last = induction_run.checkpoints[induction_run.log[-1]["name"]]
    tok = AutoTokenizer.from_pretrained(last)
    assert tok("t3 t17 t3")["input_ids"] == [3, 17, 3]
    assert AutoModelForCausalLM.from_pretrained(last).config.num_hidden_layers == 2
    again = train_task(InductionTask(vocab=32, seq_len=48), induction_run.out_dir, n_layers=2, hidden=32, heads=2,
                       intermediate=4, steps=1000, batch_size=32, checkpoints=24, lr=3e-3, weight_decay=0.0)
    assert again.log == induction_run.log  # the finished run is reused, not retrained
    with pytest.raises(ValidationError, match="another or an unfinished run"):
        train_task(InductionTask(vocab=16, seq_len=48), induction_run.out_dir, steps=5)
    with pytest.raises(ValidationError, match="unknown task"):
        train_task("grokking", tmp_path / "x")
    with pytest.raises(ValidationError, match="max_repeat"):
        train_task(InductionTask(seq_len=20, max_repeat=16), tmp_path / "y", steps=2)


def test_cli_trains_a_task_and_refuses_a_corpus_for_it(tmp_path, capsys):
    from brainalign.cli import main

    out = tmp_path / "mod"
    assert main(["train-tiny", "--task", "modular", "-o", str(out), "--steps", "4", "--checkpoints", "3",
                 "--layers", "1", "--hidden", "16", "--heads", "2", "--init-scale", "3", "--weight-decay", "0.5"]) == 0
    printed = capsys.readouterr().out
    assert "held-out acc" in printed and (out / "checkpoint-4" / "model.safetensors").is_file()
    config = json.loads((out / "training_log.json").read_text())["config"]
    assert config["init_scale"] == 3.0 and config["weight_decay"] == 0.5
    assert main(["train-tiny", "--task", "modular", "-o", str(tmp_path / "m2"), "--steps", "2", "--checkpoints", "2",
                 "--layers", "1", "--hidden", "16", "--heads", "2"]) == 0
    cfg2 = json.loads((tmp_path / "m2" / "training_log.json").read_text())["config"]
    assert cfg2["weight_decay"] == 1.0 and cfg2["task"]["p"] == 53  # the task's defaults
    # the task's own options: the grokking recipe's split from the command line
    assert main(["train-tiny", "--task", "modular", "--modulus", "7", "--train-fraction", "0.5", "--split-swaps",
                 "-o", str(tmp_path / "m3"), "--steps", "2", "--checkpoints", "2", "--layers", "1", "--hidden", "16",
                 "--heads", "2"]) == 0
    cfg3 = json.loads((tmp_path / "m3" / "training_log.json").read_text())["config"]["task"]
    assert cfg3 == {"kind": "modular", "p": 7, "train_fraction": 0.5, "split_swaps": True, "name": "modular"}
    assert main(["train-tiny", "--task", "induction", "--vocab-size", "12", "--seq-len", "40", "-o", str(tmp_path / "i"),
                 "--steps", "2", "--checkpoints", "2", "--layers", "1", "--hidden", "16", "--heads", "2",
                 "--intermediate", "8"]) == 0
    cfg4 = json.loads((tmp_path / "i" / "training_log.json").read_text())["config"]
    assert (cfg4["task"]["vocab"], cfg4["task"]["seq_len"], cfg4["task"]["kind"], cfg4["intermediate"]) == (12, 40, "induction", 8)
    capsys.readouterr()
    for argv, msg in ((["--task", "induction", "--modulus", "7"], "apply to --task modular only"),
                      (["--task", "modular", "--seq-len", "8"], "do not apply"),
                      (["--task", "modular", "--train-fraction", "1.5"], "--train-fraction must be in"),
                      (["--task", "modular", "--init-scale", "0"], "--init-scale must be a positive number"),
                      (["corpus.txt", "--split-swaps"], "apply to --task modular, not to --task text"),
                      (["corpus.txt", "--intermediate", "8"], "--intermediate applies to --task induction/modular"),
                      (["--task", "induction", "--intermediate", "0"], "--intermediate must be a positive number")):
        assert main(["train-tiny", *argv, "-o", str(tmp_path / "bad")]) == 2, argv
        assert msg in capsys.readouterr().err, argv
    assert not (tmp_path / "bad").exists()
    assert main(["train-tiny", "corpus.txt", "--init-scale", "2", "-o", str(tmp_path / "t")]) == 2
    assert "--init-scale applies to --task induction/modular" in capsys.readouterr().err
    assert main(["train-tiny", "corpus.txt", "--task", "induction", "-o", str(tmp_path / "x")]) == 2
    assert "takes no corpus" in capsys.readouterr().err
    assert main(["train-tiny", "-o", str(tmp_path / "y")]) == 2
    assert "a corpus" in capsys.readouterr().err


def test_llc_changes_when_induction_heads_form(induction_run):
    """The LLC (devinterp SGLD) of each checkpoint changes where the induction heads
    form: a main transition of the LLC curve within 0.2 decade of the formation (the
    checkpoints are 0.13 decade apart there); the same seed gives the same estimate."""
    pytest.importorskip("devinterp", reason="the devinterp extra is not installed")
    from brainalign.dynamics.downstream import cooccurrence
    from brainalign.dynamics.internal import model_states
    from brainalign.dynamics.llc import LLCSettings, estimate_llc, llc_curve
    from brainalign.dynamics.phases import detect_phases
    from transformers import AutoModelForCausalLM

    task = InductionTask(vocab=32, seq_len=48)
    x = task.data(seed=7)["heldout"][0]  # 256 fresh sequences
    s = LLCSettings(draws=60)
    ck = dict(induction_run.checkpoints)
    curve = llc_curve(ck, x, s, tokens=induction_run.tokens)
    assert curve["loss_trace"].shape == (len(ck), 2, 60) and curve.attrs["settings"]["lr"] == s.lr
    llc = curve["llc"]
    assert float(llc[-1]) > 3 * float(llc[0]) > 0  # more effective parameters once the circuit is there
    states = model_states(ck, tokens=induction_run.tokens)
    heads = detect_phases(states["induction_max"].max("layer"), x="tokens", name="induction")
    llc_phases = detect_phases(llc, x="tokens", name="llc")
    formed = formation(heads)
    # the co-occurrence table: the LLC's transition nearest to the heads' formation...
    table = cooccurrence(heads, {"llc": llc_phases})
    row = table[table["transition"] == 1 + heads.transitions.index(formed)].iloc[0]
    assert row["abs_distance_log10"] < 0.2, (table, llc_phases.summary())
    # ... is one of the LLC curve's main changes (its steep climb or its peak), not a wiggle
    near = min(llc_phases.transitions, key=lambda t: abs(t.log_at - formed.log_at))
    assert near.p < 0.05 and abs(near.change) >= 0.5 * max(abs(t.change) for t in llc_phases.transitions), llc_phases.summary()
    last = AutoModelForCausalLM.from_pretrained(ck[induction_run.log[-1]["name"]])
    a, b = (estimate_llc(last, x, LLCSettings(draws=20, seed=3)) for _ in range(2))
    assert float(a["llc"]) == float(b["llc"]) and np.array_equal(a["loss_trace"], b["loss_trace"])
    c = estimate_llc(last, x, LLCSettings(draws=20, seed=4))
    assert float(c["llc"]) != float(a["llc"])
    with pytest.raises(ValidationError, match="draws"):
        LLCSettings(draws=2)


def test_llc_without_the_extra_says_how_to_install_it(monkeypatch):
    import sys

    from brainalign.dynamics.llc import require_devinterp

    monkeypatch.setitem(sys.modules, "devinterp", None)  # as if not installed
    monkeypatch.setitem(sys.modules, "devinterp.slt", None)
    monkeypatch.setitem(sys.modules, "devinterp.slt.llc", None)
    with pytest.raises(ImportError, match=r"pip install 'brainalign\[devinterp\]'"):
        require_devinterp()
