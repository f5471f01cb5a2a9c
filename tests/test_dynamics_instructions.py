"""The instruction-following probe: its form checks, and a planted ability recovered
from a tiny GPT-NeoX trained to answer in the asked form (issue 17)."""

import json

import numpy as np
import pytest

from brainalign import ValidationError
from brainalign.dynamics import ifeval_curve, instruction_curve, probe_items, read_lm_eval
from brainalign.dynamics.instructions import KINDS, ProbeItem, answer_has_form


@pytest.mark.parametrize("kind,target,answer,ok", [
    ("one_word", (), " blue", True), ("one_word", (), " Blue.", True), ("one_word", (), " 'blue'", True),
    ("one_word", (), " light blue", False), ("one_word", (), "", False), ("one_word", (), " ...", False),
    ("one_word", (), " blue\nAnswer with one word.", True),  # the answer ends at its newline
    ("repeat", ("lantern",), " lantern", True), ("repeat", ("lantern",), " Lantern!", True),
    ("repeat", ("lantern",), " the lantern", False), ("repeat", ("lantern",), " lanterns", False),
    ("capitals", (), " APPLE", True), ("capitals", (), " NEW YORK!", True), ("capitals", (), " Apple", False),
    ("capitals", (), " 123", False),
    ("choice", ("red", "green", "blue"), " green", True), ("choice", ("red", "green", "blue"), " Blue is it", True),
    ("choice", ("red", "green", "blue"), " yellow", False), ("choice", ("red", "green", "blue"), " reddish", False),
])
def test_answers_are_scored_by_their_form(kind, target, answer, ok):
    assert answer_has_form(ProbeItem(kind, "prompt", target), answer) is ok


def test_probe_items_are_seeded_and_cover_every_kind():
    a, b, c = probe_items(), probe_items(), probe_items(seed=1)
    assert a == b and a != c
    assert [it.kind for it in a].count("repeat") == 12 and {it.kind for it in a} == set(KINDS)
    assert all(it.prompt.endswith("\nAnswer:") for it in a)
    assert all(it.target[0] in it.prompt for it in a if it.kind == "repeat")
    assert len(probe_items(n_per_kind=3)) == 12
    with pytest.raises(ValidationError, match="n_per_kind"):
        probe_items(n_per_kind=13)
    with pytest.raises(ValidationError, match="unknown probe kind"):
        answer_has_form(ProbeItem("poem", "x"), "y")


def _answer(it):
    """An answer of the asked form (the second option of a choice, the word to repeat)."""
    if it.kind == "repeat":
        return it.target[0]
    if it.kind == "choice":
        return it.target[1]
    return {"one_word": "blue", "capitals": "APPLE"}[it.kind]


def test_a_planted_ability_is_recovered_over_training(tmp_path):
    """A tiny model trained on prompts answered in the asked form: the probe reads 0 at
    initialisation and (nearly) 1 after training, per kind, on the training axis."""
    from brainalign.training.tiny import train_tiny

    items = probe_items()
    docs = ["\n".join(f"{it.prompt} {_answer(it)}" for it in np.random.default_rng(i).permutation(items))
            for i in range(60)]
    run = train_tiny(docs, tmp_path / "run", n_layers=2, hidden=64, heads=4, seq_len=64, steps=200, batch_size=16,
                     checkpoints=3, heldout=0.05)
    curve = instruction_curve(run.checkpoints)
    assert list(curve.checkpoint.values) == list(run.checkpoints)
    np.testing.assert_array_equal(curve.tokens.values, [c["tokens"] for c in run.log])
    first, last = curve.isel(checkpoint=0), curve.isel(checkpoint=-1)
    assert float(first.instruction_following) <= 0.1
    assert float(last.instruction_following) >= 0.9
    for kind in KINDS:
        assert float(last[f"instruction_{kind}"]) >= 0.75, kind


def test_ifeval_results_from_lm_eval_files(tmp_path):
    for step, acc in ((1000, 0.12), (8000, 0.31)):
        (tmp_path / f"r{step}.json").write_text(json.dumps({
            "results": {"ifeval": {"alias": "ifeval", "prompt_level_strict_acc,none": acc,
                                   "prompt_level_strict_acc_stderr,none": 0.02, "inst_level_strict_acc,none": acc + 0.1,
                                   "inst_level_strict_acc_stderr,none": "N/A"},
                        "lambada_openai": {"acc,none": 0.4, "acc_stderr,none": 0.01}},
            "config": {"model": "hf", "model_args": f"pretrained=EleutherAI/pythia-160m,revision=step{step}"}}))
    table = read_lm_eval(tmp_path)
    curve = ifeval_curve(table)
    assert list(curve.checkpoint.values) == ["step1000", "step8000"]
    np.testing.assert_allclose(curve.values, [0.12, 0.31])
    np.testing.assert_allclose(ifeval_curve(table, "inst_level_strict_acc").values, [0.22, 0.41])
    with pytest.raises(ValidationError, match="no IFEval"):
        ifeval_curve(table[table.task != "ifeval"])
