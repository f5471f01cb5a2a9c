"""Language-model features: windows, word alignment, exactness, cache, metrics, revisions."""

import logging

import numpy as np
import pytest
import torch

from brainalign import ValidationError
from brainalign.errors import DataNotFoundError
from brainalign.features import (
    FeatureCache,
    align_words,
    causal_windows,
    encoder_windows,
    extract,
    list_revisions,
    minilm_path,
    parse_revision,
)
from brainalign.features import extraction as extract_mod
from brainalign.features.revisions import PYTHIA_TOKENS_PER_STEP
from brainalign.features.testing import tiny_checkpoint
from brainalign.features.windows import tokens_processed
from brainalign.stimulus import Story

# A short real text, as a forced aligner would give it: lower case, no punctuation.
TEXT = (
    "so i was walking down the street one evening when i saw an old man sitting on a bench "
    "he looked at me and said you don't know what it's like to lose everything i didn't "
    "answer at first but then i sat down next to him and we talked for hours about his "
    "well-known restaurant in zürich which closed in 1999 after the café next door burned "
    "down and he never got over it"
).split()

SHAPES = [
    "i", "don't", "it's", "we'll", "well-known", "twenty-one", "1999", "3.5", "café",
    "naïve", "über", "日本", "antidisestablishmentarianism", "o'clock", "rock'n'roll", "x",
]


def story(name, words, tr=2.0):
    words = list(words)
    on = np.arange(len(words)) * 0.35
    n_trs = max(3, int(on[-1] // tr))
    return Story(name, words, on, on + 0.3, tr, np.arange(n_trs) * tr + 1.0)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny models on a shared 2-core machine: one torch thread is faster and steadier."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory, tok):
    return tiny_checkpoint(tmp_path_factory.mktemp("gpt2") / "tiny-gpt2", "gpt2", tokenizer=tok, n_layers=3)


@pytest.fixture(scope="module")
def minilm():
    from transformers import AutoModel, AutoTokenizer

    p = minilm_path()
    return AutoModel.from_pretrained(p).eval(), AutoTokenizer.from_pretrained(p)


# -- windows ---------------------------------------------------------------------------
@pytest.mark.parametrize("n,ctx,stride", [(1, 8, None), (7, 8, None), (8, 8, None), (9, 8, None), (100, 8, None),
                                          (1000, 64, 32), (1000, 64, 10), (333, 17, 8)])
def test_causal_windows_tile_once_with_half_context(n, ctx, stride):
    wins = causal_windows(n, ctx, stride)
    outs = np.concatenate([np.arange(w.out, w.end) for w in wins])
    assert np.array_equal(outs, np.arange(n))  # every token's state computed exactly once
    for w in wins:
        assert w.length <= ctx and 0 <= w.start <= w.out < w.end <= n
        assert w.out - w.start >= min(w.out, ctx - ctx // 2)  # >= half the window as left context
    s = stride or ctx // 2
    assert tokens_processed(wins) <= n * ctx / s  # 2x stimulus tokens at the default stride
    if stride is None:
        assert tokens_processed(wins) <= 2 * n


def test_window_arguments_are_checked():
    with pytest.raises(ValidationError, match="stride"):
        causal_windows(100, 16, 9)
    with pytest.raises(ValidationError, match="context_tokens"):
        causal_windows(100, 1)
    wins = encoder_windows(np.array([0, 2, 5]), np.array([1, 4, 5]), 3)
    assert [(w.start, w.out, w.end) for w in wins] == [(0, 0, 2), (2, 2, 5), (3, 5, 6)]


# -- alignment -------------------------------------------------------------------------
@pytest.mark.parametrize("which", ["bpe", "wordpiece"])
def test_alignment_of_word_shapes(which, tok, minilm):
    tk = tok if which == "bpe" else minilm[1]
    words = SHAPES + TEXT[:10]
    al = align_words(words, tk)
    assert al.n_words == len(words)
    assert np.all(np.diff(al.word_last) > 0)  # every word has its own, later last token
    assert np.all(al.word_first <= al.word_last)
    assert np.all(al.word_first[1:] > al.word_last[:-1])  # no token shared between words
    start = 0
    for i, w in enumerate(words):
        a, b = al.offsets[al.word_first[i]][0], al.offsets[al.word_last[i]][1]
        assert al.text[a:b] == w, (i, w, al.text[a:b])  # the word's tokens cover exactly the word
        assert a == start
        start = b + 1
    # words that must split into several tokens do
    long = words.index("antidisestablishmentarianism")
    assert al.word_last[long] > al.word_first[long]
    if which == "bpe":
        for i, w in enumerate(words):  # byte-level BPE decodes back to the word
            assert tk.decode(al.input_ids[al.word_first[i] : al.word_last[i] + 1].tolist()).strip() == w


def test_alignment_errors_and_dropped_characters(minilm, caplog):
    _, tk = minilm
    with caplog.at_level(logging.WARNING):
        al = align_words(["hello", "\ufffd", "world"], tk)  # BERT's normaliser drops U+FFFD
    assert al.word_last[1] == al.word_last[0]  # borrows the state after 'hello'
    assert "no token of their own" in caplog.text

    class Slow:
        is_fast = False

    with pytest.raises(ValidationError, match="not a fast tokenizer"):
        align_words(["a"], Slow())


def test_a_tokenizer_that_does_not_know_the_words_is_warned_about_once(minilm, caplog, monkeypatch):
    """A task model's word-level tokenizer (train-tiny --task induction) maps every story
    word to its unknown token: warned, once for all the stories and checkpoints; a
    tokenizer that knows the words (MiniLM's WordPiece, which has an unknown token) is not."""
    import brainalign.features.align as align
    from brainalign.training.tasks import word_level_tokenizer

    monkeypatch.setattr(align, "_warned_unknown", set())
    words = "once upon a time there was a small village by the sea".split()
    task_tok = word_level_tokenizer([f"t{i}" for i in range(32)])
    with caplog.at_level(logging.WARNING):
        al = align_words(words, task_tok, story="s1")
        align_words(words, task_tok, story="s2")
        align_words(words, word_level_tokenizer([f"t{i}" for i in range(32)]), story="s1")  # the next checkpoint's
    assert (al.input_ids == task_tok.unk_token_id).all()
    hits = [r for r in caplog.records if "unknown token" in r.getMessage()]
    assert len(hits) == 1 and "story 's1': 100% of its 12 tokens" in hits[0].getMessage(), caplog.text
    assert "no word identity" in hits[0].getMessage() and "at most the word rate" in hits[0].getMessage()
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        align_words(words, minilm[1])
        align_words(words + ["t3"], word_level_tokenizer([*words, "t3"]))  # knows them all
    assert "unknown token" not in caplog.text


# -- exactness -------------------------------------------------------------------------
def _naive_causal(model, ids):
    with torch.inference_mode():
        out = model(input_ids=torch.as_tensor([ids]), output_hidden_states=True)
    return [h[0, -1].numpy() for h in out.hidden_states]


def test_strided_equals_naive_full_left_context_gpt2(gpt2, tok):
    from transformers import AutoModelForCausalLM

    st = story("walk", TEXT)
    ctx = 32
    fs = extract([st], model=gpt2, context_tokens=ctx, batch_size=3, cache=False)
    model = AutoModelForCausalLM.from_pretrained(gpt2).eval()
    al = align_words(st.words, tok)
    assert al.n_tokens > 3 * ctx  # several windows
    wins = causal_windows(al.n_tokens, ctx)
    n_full = n_window = 0
    for i in range(st.n_words):
        # the naive pass tokenizes the text up to this word on its own
        ids = tok(" ".join(TEXT[: i + 1]))["input_ids"]
        t = len(ids) - 1
        assert t == al.word_last[i]
        if t < ctx:  # the whole left context fits the window: equal to the full-context pass
            naive = _naive_causal(model, ids)
            n_full += 1
        else:  # else equal to a pass over exactly the window's left context
            w = next(w for w in wins if w.out <= t < w.end)
            naive = _naive_causal(model, ids[w.start :])
            assert t - w.start >= ctx // 2
            n_window += 1
        for layer in fs.layers:
            np.testing.assert_allclose(fs.get("walk", layer)[i], naive[layer], rtol=1e-4, atol=1e-5)
    assert n_full > 5 and n_window > 20
    assert fs.info["tokens_processed"] <= 2 * fs.info["stimulus_tokens"]


def test_encoder_left_context_equals_naive_minilm(minilm):
    model, tk = minilm
    words = TEXT[:40]
    st = story("walk", words)
    ctx = 24
    fs = extract([st], model=minilm_path(), context_tokens=ctx, batch_size=8, cache=False)
    assert fs.info["kind"] == "encoder" and fs.n_layers == 6
    checked_full = 0
    for i in range(len(words)):
        ids = tk(" ".join(words[: i + 1]), add_special_tokens=False)["input_ids"]
        full = len(ids) <= ctx
        checked_full += full
        ids = [tk.cls_token_id] + ids[-ctx:] + [tk.sep_token_id]  # left context only
        with torch.inference_mode():
            hs = model(input_ids=torch.as_tensor([ids]), output_hidden_states=True).hidden_states
        for layer in (0, 3, 6):
            np.testing.assert_allclose(fs.get("walk", layer)[i], hs[layer][0, -2].numpy(), rtol=1e-4, atol=1e-4)
    assert checked_full >= 10


def test_mean_word_state_and_design(gpt2, tok):
    st = story("shapes", SHAPES * 2)
    last = extract([st], model=gpt2, context_tokens=16, cache=False)
    mean = extract([st], model=gpt2, context_tokens=16, cache=False, word_state="mean")
    al = align_words(st.words, tok)
    single = al.word_first == al.word_last
    assert single.any() and (~single).any()
    for layer in last.layers:
        a, b = last.get("shapes", layer), mean.get("shapes", layer)
        np.testing.assert_allclose(a[single], b[single], rtol=1e-5, atol=1e-6)
        assert not np.allclose(a[~single], b[~single])
    X = last.design([st], layer=2)
    assert X.shape == (st.n_trs, 32 * 4) and X.dtype == np.float32
    with pytest.raises(ValidationError, match="word_state"):
        extract([st], model=gpt2, cache=False, word_state="first")


# -- metrics ---------------------------------------------------------------------------
def test_loss_and_norm_metrics_match_a_plain_forward_pass(gpt2, tok):
    from transformers import AutoModelForCausalLM

    st1, st2 = story("a", TEXT[:30]), story("b", TEXT[30:70])
    fs = extract([st1, st2], model=gpt2, context_tokens=256, cache=False)  # one window per story
    model = AutoModelForCausalLM.from_pretrained(gpt2).eval()
    norms, n = np.zeros(fs.n_layers + 1), 0
    for st in (st1, st2):
        ids = torch.as_tensor([tok(st.text)["input_ids"]])
        with torch.inference_mode():
            out = model(input_ids=ids, labels=ids, output_hidden_states=True)
        assert fs.metrics["loss"][st.name] == pytest.approx(float(out.loss), rel=1e-5)
        norms += [float(h[0].norm(dim=-1).sum()) for h in out.hidden_states]
        n += ids.shape[1]
    np.testing.assert_allclose([fs.metrics["activation_norm"][k] for k in fs.layers], norms / n, rtol=1e-5)
    assert abs(fs.metrics["mean_loss"] - np.log(len(tok))) < 0.5  # untrained: close to uniform


# -- cache -----------------------------------------------------------------------------
def _no_model(*a, **k):
    raise AssertionError("the model was loaded although the cache holds the features")


def test_cache_roundtrip_float16_staleness_and_atomicity(gpt2, tmp_path, monkeypatch):
    st = story("walk", TEXT[:50])
    root = tmp_path / "fc"
    fresh = extract([st], model=gpt2, context_tokens=16, cache=False)
    first = extract([st], model=gpt2, context_tokens=16, cache=root, layers=[0, 2])
    assert first.layers == [0, 2] and first.info["cache_hits"] == 0
    real_load = extract_mod.load_model
    monkeypatch.setattr(extract_mod, "load_model", _no_model)
    again = extract([st], model=gpt2, context_tokens=16, cache=root, layers=[2])
    assert again.info["cache_hits"] == 1
    np.testing.assert_array_equal(again.get("walk", 2), fresh.get("walk", 2))
    assert again.metrics["loss"] == pytest.approx(fresh.metrics["loss"])
    # other context settings, layers not cached, or edited words are misses
    for kw, words in [(dict(context_tokens=8), st.words), (dict(layers=[1]), st.words), ({}, st.words[:-1])]:
        with pytest.raises(AssertionError, match="was loaded"):
            extract([st.replace(words=words, onsets=st.onsets[: len(words)], offsets=st.offsets[: len(words)])],
                    model=gpt2, **{"context_tokens": 16, **kw}, cache=root)
    monkeypatch.setattr(extract_mod, "load_model", real_load)
    # float16 storage
    h = extract([st], model=gpt2, context_tokens=16, cache=tmp_path / "f16", cache_dtype="float16")
    stored = list((tmp_path / "f16").rglob("L002.npy"))
    assert len(stored) == 1 and np.load(stored[0]).dtype == np.float16
    np.testing.assert_allclose(h.get("walk", 2), fresh.get("walk", 2), rtol=2e-3, atol=2e-3)
    assert h.get("walk", 2).dtype == np.float32
    monkeypatch.setattr(extract_mod, "load_model", _no_model)
    extract([st], model=gpt2, context_tokens=16, cache=tmp_path / "f16", cache_dtype="float16")  # a hit
    with pytest.raises(AssertionError, match="was loaded"):  # float32 asked, float16 stored: a miss
        extract([st], model=gpt2, context_tokens=16, cache=tmp_path / "f16")
    monkeypatch.setattr(extract_mod, "load_model", real_load)
    # a write that dies half-way leaves no entry that looks complete
    calls = {"n": 0}
    real_save = np.save

    def flaky(f, arr, **kw):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError("disk full")
        return real_save(f, arr, **kw)

    monkeypatch.setattr(np, "save", flaky)
    with pytest.raises(OSError, match="disk full"):
        extract([st], model=gpt2, context_tokens=16, cache=tmp_path / "broken")
    monkeypatch.setattr(np, "save", real_save)
    assert not list((tmp_path / "broken").rglob("meta.json"))
    assert not list((tmp_path / "broken").rglob("*.tmp"))
    ok = extract([st], model=gpt2, context_tokens=16, cache=tmp_path / "broken")
    assert ok.info["cache_hits"] == 0
    np.testing.assert_array_equal(ok.get("walk", 1), fresh.get("walk", 1))


def test_cache_cli_info_and_clear(gpt2, capsys):
    from brainalign.cli import main

    st = story("walk", TEXT[:20])
    extract([st], model=gpt2, context_tokens=16, dataset_name="demo")
    cache = FeatureCache()
    rows = cache.info()
    assert len(rows) == 1 and rows[0]["stories"] == 1 and rows[0]["datasets"] == ["demo"]
    assert main(["cache", "info"]) == 0
    out = capsys.readouterr().out
    assert "tiny-gpt2" in out and "1 stories" in out
    assert main(["cache", "clear", "--model", "someone/else"]) == 0
    assert len(cache.info()) == 1
    assert main(["cache", "clear"]) == 0
    assert cache.info() == []
    assert "freed" in capsys.readouterr().out


# -- checkpoints and the training axis -------------------------------------------------
def test_parse_revision_families():
    assert parse_revision("step1000") == {"step": 1000, "tokens": 1000 * PYTHIA_TOKENS_PER_STEP}
    assert parse_revision("step143000")["tokens"] == pytest.approx(299_892_736_000)
    assert parse_revision("step1000-tokens4B") == {"step": 1000, "tokens": 4e9}
    assert parse_revision("stage1-step5000-tokens21B") == {"step": 5000, "tokens": 21e9}
    assert parse_revision("ckpt_000") == {"step": 0, "tokens": 3.5e9}
    assert parse_revision("ckpt_359")["tokens"] == pytest.approx(1.26e12)
    assert parse_revision("ckpt_009", tokens_per_step=1e9)["tokens"] == 10e9
    assert parse_revision("/runs/x/checkpoint-500") == {"step": 500, "tokens": None}
    assert parse_revision("checkpoint-500", tokens_per_step=1000) == {"step": 500, "tokens": 500_000.0}
    assert parse_revision("main") == {"step": None, "tokens": None}
    assert parse_revision(None) == {"step": None, "tokens": None}
    assert parse_revision("final", mapping={"final": {"step": 9, "tokens": 1e6}}) == {"step": 9, "tokens": 1e6}
    assert parse_revision("x", mapping=lambda r: {"tokens": 5}) == {"step": None, "tokens": 5.0}
    with pytest.raises(ValidationError, match="unknown keys"):
        parse_revision("x", mapping={"x": {"steps": 1}})
    with pytest.raises(ValidationError, match="tokens_per_step"):
        parse_revision("checkpoint-1", tokens_per_step=-1)


def test_local_checkpoint_folders(tmp_path, tok):
    run = tmp_path / "run"
    for i, name in enumerate(["checkpoint-1000", "checkpoint-50", "checkpoint-200"]):
        tiny_checkpoint(run / name, "gpt_neox", seed=i, tokenizer=tok, hidden=16, n_layers=1)
    (run / "logs").mkdir()
    assert list_revisions(run) == ["checkpoint-50", "checkpoint-200", "checkpoint-1000"]
    st = story("walk", TEXT[:12])
    a = extract([st], model=run, revision="checkpoint-50", tokens_per_step=100, cache=False)
    b = extract([st], model=run / "checkpoint-200", cache=False)
    assert a.training == {"step": 50, "tokens": 5000.0} and b.training == {"step": 200, "tokens": None}
    assert not np.allclose(a.get("walk", 1), b.get("walk", 1))
    c = extract([st], model=run, revision="checkpoint-50", training={"step": 7, "tokens": 1e3}, cache=False)
    assert c.training == {"step": 7, "tokens": 1000.0}
    with pytest.raises(DataNotFoundError, match="checkpoint-3"):
        extract([st], model=run, revision="checkpoint-3", cache=False)
    with pytest.raises(DataNotFoundError, match="no checkpoint folders"):
        list_revisions(run / "logs")


def test_bad_inputs_are_named(gpt2):
    st = story("walk", TEXT[:12])
    with pytest.raises(ValidationError, match="Dataset or a list of Story"):
        extract("walk", model=gpt2)
    with pytest.raises(ValidationError, match="duplicate story"):
        extract([st, st], model=gpt2)
    with pytest.raises(ValidationError, match="layer 9 out of range"):
        extract([st], model=gpt2, layers=[9], cache=False)
    with pytest.raises(ValidationError, match="context_tokens"):
        extract([st], model=gpt2, context_tokens=1)
    with pytest.raises(DataNotFoundError, match="does not exist"):
        extract([st], model="./no/such/model")
    neg = extract([st], model=gpt2, layers=[-1], cache=False)
    assert neg.layers == [3] and neg.depth(3) == 1.0


def test_dataset_source_cache_key_and_pickling(gpt2, tmp_path):
    import pickle

    from brainalign.datasets import Dataset
    from brainalign.stimulus import Responses, Space

    a, b = story("a", TEXT[:25]), story("b", TEXT[25:60])
    rng = np.random.default_rng(0)
    resp = {("S1", s.name): (lambda n=s.n_trs: rng.standard_normal((n, 4)).astype(np.float32)) for s in (a, b)}
    ds = Dataset("toy", [a, b], ["S1"], Space.volume("vol", np.ones((2, 2, 1), bool)), Responses(resp), ["a"], ["b"])
    fs = extract(ds, model=gpt2, context_tokens=16, layers=[1, 3])
    assert fs.stories == ["a", "b"] and fs.info["dataset"] == "toy"
    assert FeatureCache().info()[0]["datasets"] == ["toy"]
    X = fs.design(ds, layer=3)
    assert X.shape == (a.n_trs + b.n_trs, 32 * 4)
    np.testing.assert_allclose(fs.design(["b"], layer=1), fs.design([b], layer=1))
    clone = pickle.loads(pickle.dumps(fs))  # lazily cached features travel to workers
    np.testing.assert_array_equal(clone.get("b", 3), fs.get("b", 3))


def test_config_names_reach_extract(gpt2, tmp_path):
    """A run config's ``features:`` names: ``float16`` stores float16, ``word_reduction`` is
    the old name of ``word_state`` (a DeprecationWarning); both reach :func:`extract`."""
    from brainalign.features import extract_options

    st = story("shapes", SHAPES * 2)
    opts = extract_options({"context_tokens": 16, "batch_size": 4, "float16": True, "word_state": "mean"})
    assert opts == {"context_tokens": 16, "batch_size": 4, "cache_dtype": "float16", "word_state": "mean"}
    assert extract_options({"float16": False})["cache_dtype"] == "float32"
    h = extract([st], model=gpt2, cache=tmp_path / "f16", layers=[2], **opts)
    stored = list((tmp_path / "f16").rglob("L002.npy"))
    assert len(stored) == 1 and np.load(stored[0]).dtype == np.float16
    mean = extract([st], model=gpt2, context_tokens=16, cache=False, word_state="mean", layers=[2])
    np.testing.assert_allclose(h.get("shapes", 2), mean.get("shapes", 2), rtol=2e-3, atol=2e-3)
    with pytest.warns(DeprecationWarning, match="word_reduction is deprecated; use features.word_state"):
        assert extract_options({"word_reduction": "mean"}) == {"word_state": "mean"}
    with pytest.warns(DeprecationWarning, match=r"extract\(word_reduction=\) is deprecated; use word_state="):
        old = extract([st], model=gpt2, context_tokens=16, cache=False, word_reduction="mean", layers=[2])
    np.testing.assert_array_equal(old.get("shapes", 2), mean.get("shapes", 2))
    assert old.info["word_state"] == "mean"
    with pytest.raises(ValidationError, match="unknown setting 'float64'"):
        extract_options({"float64": True})
    with pytest.raises(ValidationError, match="float16 and cache_dtype disagree"):
        extract_options({"float16": True, "cache_dtype": "float32"})


def test_features_know_their_stories_from_construction(gpt2):
    """``Features(story_objs=)``: design() takes story names without anything patched in later."""
    from brainalign.features import Features

    a = story("a", TEXT[:25])
    fs = extract([a], model=gpt2, context_tokens=16, layers=[1], cache=False)
    again = Features(fs.model, fs.revision, fs.layers, fs.n_layers, {("a", 1): fs.get("a", 1)}, ["a"],
                     story_objs={"a": a})
    np.testing.assert_array_equal(again.design(["a"], layer=1), fs.design([a], layer=1))
    with pytest.raises(ValidationError, match="Story objects"):
        Features(fs.model, fs.revision, [1], fs.n_layers, {}, ["a"]).design(["a"], layer=1)
