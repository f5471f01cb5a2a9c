import json

import numpy as np
import pytest

from brainalign import DataNotFoundError, ValidationError
from brainalign.dynamics import detect_phases
from brainalign.dynamics.downstream import cooccurrence, downstream_curves, read_downstream_csv, read_lm_eval


def _new_format(rev, acc):
    # lm-evaluation-harness >= 0.4: "metric,filter" keys, model_args as a string
    return {
        "results": {
            "lambada_openai": {"alias": "lambada_openai", "acc,none": acc, "acc_stderr,none": 0.01,
                               "perplexity,none": 10 / (acc + 0.1), "perplexity_stderr,none": 0.5},
            "piqa": {"alias": "piqa", "acc,none": acc / 2, "acc_stderr,none": 0.02, "acc_norm,none": acc / 3,
                     "acc_norm_stderr,none": "N/A"},
        },
        "config": {"model": "hf", "model_args": f"pretrained=EleutherAI/pythia-160m,revision={rev},dtype=float32"},
        "versions": {"lambada_openai": 1.0, "piqa": 1.0},
        "n-shot": {"lambada_openai": 0, "piqa": 0},
    }


def _old_format(rev, acc):
    # lm-evaluation-harness 0.3: plain keys, model_args possibly a dict
    return {"results": {"lambada_openai": {"acc": acc, "acc_stderr": 0.01, "ppl": 12.0}},
            "config": {"model": "gpt2", "model_args": {"pretrained": "x", "revision": rev}}, "versions": {}}


def test_read_lm_eval_both_formats(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "results_1.json").write_text(json.dumps(_new_format("step1000", 0.3)))
    (tmp_path / "a" / "results_2.json").write_text(json.dumps(_new_format("step143000", 0.6)))
    old = tmp_path / "old.json"
    old.write_text(json.dumps(_old_format("step8", 0.05)))
    df = read_lm_eval([tmp_path / "a", old])
    lam = df[(df.task == "lambada_openai") & (df.metric == "acc")].set_index("checkpoint")
    assert lam.loc["step1000", "value"] == 0.3 and lam.loc["step1000", "stderr"] == 0.01
    assert lam.loc["step8", "value"] == 0.05 and lam.loc["step8", "stderr"] == 0.01
    assert lam.loc["step1000", "tokens"] == 1000 * 2097152 and lam.loc["step1000", "step"] == 1000
    norm = df[(df.task == "piqa") & (df.metric == "acc_norm")]
    assert len(norm) == 2 and norm["stderr"].isna().all()  # "N/A" stderr
    assert not df["metric"].str.contains("stderr").any() and "alias" not in set(df["metric"])
    curves = downstream_curves(df, "acc")
    assert list(curves["checkpoint"].values) == ["step8", "step1000", "step143000"]
    assert curves.sel(task="lambada_openai", checkpoint="step143000") == 0.6
    assert np.isnan(curves.sel(task="piqa", checkpoint="step8"))  # old file had no piqa
    # a user mapping wins over the parser
    df2 = read_lm_eval(old, tokens={"step8": 123.0})
    assert (df2["tokens"] == 123.0).all()


def test_read_lm_eval_errors(tmp_path):
    with pytest.raises(DataNotFoundError, match="does not exist"):
        read_lm_eval(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValidationError, match="not valid JSON"):
        read_lm_eval(bad)
    bad.write_text(json.dumps({"foo": 1}))
    with pytest.raises(ValidationError, match="no 'results'"):
        read_lm_eval(bad)


def test_read_csv(tmp_path):
    p = tmp_path / "down.csv"
    p.write_text("checkpoint,task,metric,value\ncheckpoint-10,blimp,acc,0.5\ncheckpoint-100,blimp,acc,0.7\n")
    df = read_downstream_csv(p, tokens_per_step=2048)
    assert list(df["tokens"]) == [10 * 2048, 100 * 2048]
    cur = downstream_curves(df)
    np.testing.assert_array_equal(cur.sel(task="blimp").values, [0.5, 0.7])
    p.write_text("checkpoint,task,value\nx,blimp,0.5\n")
    with pytest.raises(ValidationError, match=r"lacks column\(s\) \['metric'\]"):
        read_downstream_csv(p)


def _kinked(u, bps, slopes, rng, sd=0.01):
    y = slopes[0] * (u - u[0])
    for q in range(1, len(slopes)):
        y = y + (slopes[q] - slopes[q - 1]) * np.maximum(u - bps[q - 1], 0)
    return 10**u, y + rng.normal(0, sd, len(u))


def test_cooccurrence_table():
    rng = np.random.default_rng(0)
    u = np.linspace(6, 10, 40)
    brain = detect_phases(_kinked(u, [7.5, 8.7], [0.6, -0.6, 0.6], rng), n_boot=50, name="brain")
    others = {
        "induction": _kinked(u, [7.6], [0.0, 1.0], rng),  # 0.1 decade after the first brain transition
        "loss": _kinked(u, [], [-0.5], rng),  # no transition
    }
    df = cooccurrence(brain, others, n_boot=0)
    assert len(df) == 4 and set(df["curve"]) == {"induction", "loss"}
    first = df[(df.transition == 1) & (df.curve == "induction")].iloc[0]
    assert first["distance_log10"] == pytest.approx(0.1, abs=0.08)
    assert first["brain_change"] == "rising\u2192falling" and first["other_change"] == "flat\u2192rising"
    second = df[(df.transition == 2) & (df.curve == "induction")].iloc[0]
    assert second["distance_log10"] == pytest.approx(7.6 - 8.7, abs=0.1) and not second["within_interval"]
    assert df[df.curve == "loss"]["other_tokens"].isna().all()
    # rows of a transition are ordered nearest first
    assert df[df.transition == 1]["curve"].tolist() == ["induction", "loss"]
