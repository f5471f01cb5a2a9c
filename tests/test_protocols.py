"""One-command scores under a versioned protocol, and their result cards (issue 18)."""

import json

import numpy as np
import pytest

from brainalign import ValidationError
from brainalign.protocols import PROTOCOLS, Protocol, get_protocol, read_card, register_protocol, score

SMALL = Protocol("simulated-small-v1", "simulated", 1, "a small simulated protocol for the tests",
                 dataset_options={"space": 400, "stories": 4, "features": "random:8", "n_subjects": 2, "snr": 2.0},
                 depths=(0.5, 1.0), context_tokens=32, alphas=(0.0, 4.0, 5), n_folds=3, rois="whole_cortex")


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from brainalign.datasets import _corpus
    from brainalign.training import train_tiny

    out = tmp_path_factory.mktemp("tiny")
    return train_tiny(_corpus.stories_dir(), out / "model", n_layers=2, hidden=32, heads=2, seq_len=32,
                      steps=30, batch_size=4, checkpoints=3, seed=0)


def test_protocols_are_registered_and_versioned():
    assert {"lebel2023-v1", "narratives-v1", "simulated-v1"} <= set(PROTOCOLS)
    assert get_protocol(None, dataset="lebel2023").name == "lebel2023-v1"
    register_protocol(SMALL)
    register_protocol(SMALL)  # the same settings again: fine
    with pytest.raises(ValidationError, match="other settings"):
        register_protocol(Protocol("simulated-small-v1", "simulated", 1, "changed", n_folds=4))
    with pytest.raises(ValidationError, match="unknown protocol 'nope'"):
        get_protocol("nope")
    assert SMALL.key != Protocol("x", "simulated", 1, "", n_folds=4).key


def test_score_writes_a_card_equal_to_the_sweep(tmp_path, tiny_model):
    from brainalign.sweep import run
    from brainalign.sweep.analyze import roi_intervals

    register_protocol(SMALL)
    card = score(str(tiny_model.out_dir), protocol="simulated-small-v1", out=tmp_path / "card", progress=False)
    assert read_card(tmp_path / "card") == json.loads((tmp_path / "card" / "card.json").read_text()) == card
    last = list(tiny_model.checkpoints)[-1]
    assert card["model"]["revision"] == last and card["checkpoint"] == last
    assert card["protocol"]["key"] == SMALL.key and [x["depth"] for x in card["layers"]] == [0.5, 1.0]
    # the equivalent sweep, run by hand with the protocol's settings
    cfg = SMALL.config(str(tiny_model.out_dir), last, None, None, tmp_path / "same.zarr")
    res = run(cfg, progress=False).results
    iv = roi_intervals(res).isel(checkpoint=0)
    for entry in card["layers"]:
        got = entry["rois"]["whole_cortex"]
        np.testing.assert_allclose(got["score"], float(iv.estimate.sel(roi="whole_cortex", layer=entry["layer"])), atol=1e-6)
        np.testing.assert_allclose([got["lo"], got["hi"]], [float(iv.lo.sel(roi="whole_cortex", layer=entry["layer"])),
                                                          float(iv.hi.sel(roi="whole_cortex", layer=entry["layer"]))], atol=1e-6)
        assert got["lo"] <= got["score"] <= got["hi"] and 0 <= got["p"] <= 1
    best = card["best"]["whole_cortex"]
    cv = res["roi_cv_score"].isel(checkpoint=0).sel(roi="whole_cortex").mean("subject")
    assert best["layer"] == int(cv.layer.values[int(np.argmax(cv.values))])
    # the random-init baseline: same protocol, same layers, its own store
    base = card["baselines"]["random_init"]
    assert (tmp_path / "card" / base["store"]).is_dir() and base["best"]["whole_cortex"]["layer"] in res.layer.values
    # word rate alone, same protocol: its number is the fit of that one feature
    wr = card["baselines"]["word_rate"]["best"]["whole_cortex"]
    assert wr["layer"] == 0 and wr["lo"] <= wr["score"] <= wr["hi"]
    # a rerun reuses both stores and gives the same numbers
    again = score(str(tiny_model.out_dir), protocol="simulated-small-v1", out=tmp_path / "card", progress=False)
    assert again["layers"] == card["layers"] and again["baselines"] == card["baselines"]


def test_bad_requests_are_named(tmp_path):
    with pytest.raises(ValidationError, match="protocol simulated-v1 is for dataset 'simulated', not 'lebel2023'"):
        score("x", dataset="lebel2023", protocol="simulated-v1", out=tmp_path)
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ValidationError, match="not a brainalign result card"):
        read_card(tmp_path / "bad.json")


def test_score_command(tmp_path, tiny_model, capsys):
    from brainalign.cli import main

    register_protocol(SMALL)
    assert main(["score", str(tiny_model.out_dir), "--protocol", "simulated-small-v1", "--no-baseline",
                 "-o", str(tmp_path / "c")]) == 0
    out = capsys.readouterr().out
    card = read_card(tmp_path / "c")
    assert "whole_cortex" in out and f"{card['best']['whole_cortex']['score']:.4f}" in out
    assert card["baselines"] == {}
    assert main(["score", "x", "--protocol", "nope", "-o", str(tmp_path / "d")]) == 2
    assert "unknown protocol 'nope'" in capsys.readouterr().err


def test_compare_tells_a_better_model_and_not_an_equal_one(tmp_path, tiny_model):
    """On data driven by MiniLM (layer 3), MiniLM is the better model than a barely trained
    tiny GPT-NeoX; a model against itself shows no difference."""
    from brainalign.features.loading import minilm_path
    from brainalign.protocols import compare

    proto = register_protocol(Protocol(
        "simulated-minilm-v1", "simulated", 1, "simulated data driven by MiniLM layer 3 (tests)",
        dataset_options={"space": 400, "stories": 5, "features": "minilm:3", "n_subjects": 2, "snr": 2.0,
                         "test_story": ["thelighthousekeeper", "thewatchmaker"]},
        depths=(0.5, 1.0), context_tokens=32, alphas=(0.0, 4.0, 5), n_folds=3, rois="whole_cortex"))
    a = score(str(tiny_model.out_dir), protocol=proto, out=tmp_path / "tiny", baseline=False, progress=False)
    b = score(str(minilm_path()), protocol=proto, out=tmp_path / "minilm", baseline=False, progress=False)
    assert b["best"]["whole_cortex"]["score"] > a["best"]["whole_cortex"]["score"]
    table = compare(tmp_path / "tiny", tmp_path / "minilm")
    best = table[table.layer == "chosen (CV)"].iloc[0]
    assert best.difference > 0 and best.lo > 0 and best.p < 0.05
    np.testing.assert_allclose(best.difference, b["best"]["whole_cortex"]["score"] - a["best"]["whole_cortex"]["score"],
                               atol=1e-6)
    # the same model scored again in another folder: identical numbers, no difference
    score(str(tiny_model.out_dir), protocol=proto, out=tmp_path / "tiny-again", baseline=False, progress=False)
    same = compare(tmp_path / "tiny", tmp_path / "tiny-again")
    assert (same.difference == 0).all() and (same.p == 1).all()
    # (the level of these paired differences between models of equal true score is
    # checked in tests/test_roi_inference.py::test_paired_differences_hold_their_level)
    register_protocol(SMALL)
    other = score(str(tiny_model.out_dir), protocol="simulated-small-v1", out=tmp_path / "small", baseline=False,
                  progress=False)
    assert other["protocol"]["key"] != a["protocol"]["key"]
    with pytest.raises(ValidationError, match="differ in protocol"):
        compare(tmp_path / "tiny", tmp_path / "small")


def test_leaderboard_lists_every_card(tmp_path, tiny_model, capsys):
    from brainalign.cli import main

    register_protocol(SMALL)
    for name, rev in (("a", None), ("b", list(tiny_model.checkpoints)[1])):
        score(str(tiny_model.out_dir), protocol=SMALL, revision=rev, out=tmp_path / "cards" / name, baseline=False,
              progress=False)
    assert main(["leaderboard", str(tmp_path / "cards")]) == 0
    html = (tmp_path / "cards" / "leaderboard.html").read_text()
    md = (tmp_path / "cards" / "leaderboard.md").read_text().splitlines()
    assert len(md) == 4 and md[0].startswith("| model | revision | protocol")
    for name in ("a", "b"):
        card = read_card(tmp_path / "cards" / name)
        assert card["model"]["revision"] in html and f"{card['summary']['whole_cortex']['score']:.4f}" in html
    assert "<script>" in html and "simulated-small-v1" in html
    assert main(["compare", str(tmp_path / "cards" / "a"), str(tmp_path / "cards" / "b")]) == 0
    assert "chosen (CV)" in capsys.readouterr().out
    assert main(["leaderboard", str(tmp_path / "nothing")]) == 2
