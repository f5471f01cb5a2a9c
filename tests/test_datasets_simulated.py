import numpy as np
import pytest

from brainalign import ValidationError
from brainalign.datasets import load, simulate
from brainalign.datasets._corpus import natural_timing, story_names, tokenize
from brainalign.datasets.simulated import corpus_stories, word_embedding_features


def _small(**kw):
    args = dict(n_subjects=2, stories=3, space=200, features=word_embedding_features(16), snr=1.0)
    args.update(kw)
    return simulate(**args)


def test_corpus_is_real_prose_with_natural_timing():
    names = story_names()
    assert len(names) >= 10
    stories, respdict = corpus_stories(names)
    n_words = sum(s.n_words for s in stories)
    assert n_words > 4000
    for s in stories:
        rate = s.n_words / (s.offsets[-1] - s.onsets[0])
        assert 2.0 <= rate <= 3.2, (s.name, rate)
        # longer words last longer
        lens = np.array([len(w) for w in s.words])
        dur = s.offsets - s.onsets
        assert dur[lens >= 8].mean() > 1.5 * dur[lens <= 3].mean()
        # lebel grid: respdict - 20 rows kept
        assert s.n_trs == respdict[s.name] - 20
        assert s.tr_times[0] == 2.0 * 10 - 10.0 + 1.0


def test_sentence_ends_get_pauses():
    words, pauses = tokenize("One two, three. Four five!\n\nSix seven.")
    assert words == ["One", "two", "three", "Four", "five", "Six", "seven"]
    assert list(pauses) == [0, 1, 2, 0, 3, 0, 3]
    on, off = natural_timing(words, pauses, seed=1, name="x")
    gaps = on[1:] - off[:-1]
    assert gaps[2] > 3 * gaps[0] and gaps[4] > gaps[2] * 1.1
    on2, _ = natural_timing(words, pauses, seed=1, name="x")
    np.testing.assert_array_equal(on, on2)


def test_simulate_structure_and_determinism():
    ds = _small()
    assert ds.subjects == ["sim01", "sim02"]
    assert ds.test_stories == ["thelighthousekeeper"] and len(ds.train_stories) == 2
    for st in ds.stories:
        y = ds.responses("sim01", st)
        assert y.shape == (ds.stories[st].n_trs, 200) and y.dtype == np.float32
        np.testing.assert_allclose(y.mean(0), 0, atol=1e-5)
    np.testing.assert_array_equal(ds.responses("sim02", "theflood"), _small().responses("sim02", "theflood"))
    assert not np.allclose(ds.responses("sim01", "theflood"), ds.responses("sim02", "theflood"))
    rep = ds.repeats("sim01", "thelighthousekeeper")
    assert rep.shape == (4, ds.stories["thelighthousekeeper"].n_trs, 200)
    assert not ds.has_repeats("sim01", "theflood")


def test_planted_signal_matches_ground_truth():
    ds = _small(snr=2.0, n_subjects=1, stories=4)
    gt = ds.ground_truth
    m = gt.responsive["sim01"]
    assert 10 < m.sum() < 150
    rs = []
    for st in ds.train_stories:
        y = ds.responses("sim01", st)
        s = gt.signal("sim01", st)
        assert np.all(s[:, ~m] == 0)
        rs += [np.corrcoef(y[:, i], s[:, i])[0, 1] for i in np.flatnonzero(m)]
    # realised correlation with the true signal is what the ground truth says
    assert abs(np.mean(rs) - gt.expected_r["sim01"][m].mean()) < 0.06
    assert np.all(gt.expected_r["sim01"][~m] == 0)
    # the average of repeats is closer to the signal: the ceiling
    t = ds.test_stories[0]
    y = ds.responses("sim01", t)
    s = gt.signal("sim01", t)
    rc = np.mean([np.corrcoef(y[:, i], s[:, i])[0, 1] for i in np.flatnonzero(m)])
    assert abs(rc - gt.ceiling["sim01"][m].mean()) < 0.06
    assert gt.ceiling["sim01"][m].mean() > gt.expected_r["sim01"][m].mean() + 0.05


def test_noise_is_autocorrelated_and_smooth():
    ds = _small(n_subjects=1, snr=0.5, ar=0.6, smoothing=4)
    y = ds.responses("sim01", "theflood")
    lag1 = np.mean([np.corrcoef(y[:-1, i], y[1:, i])[0, 1] for i in range(0, 200, 7)])
    neigh = np.mean([np.corrcoef(y[:, i], y[:, i + 1])[0, 1] for i in range(0, 99, 3)])
    far = np.mean([np.corrcoef(y[:, i], y[:, i + 40])[0, 1] for i in range(0, 59, 3)])
    assert lag1 > 0.35
    assert neigh > 0.4 and abs(far) < 0.2
    white = _small(n_subjects=1, snr=0.5, ar=0.0, smoothing=0).responses("sim01", "theflood")
    assert np.mean([np.corrcoef(white[:-1, i], white[1:, i])[0, 1] for i in range(0, 200, 7)]) < lag1 - 0.2


def test_fsaverage5_regions_on_mesh():
    ds = simulate(n_subjects=2, stories=2, features=word_embedding_features(8), n_repeats=2)
    assert ds.space("sim01").n_targets == 20484
    gt = ds.ground_truth
    lab = gt.roi_labels["sim01"]
    nl = 10242
    names = gt.roi_names
    for k, name in names.items():
        where = np.flatnonzero(lab == k)
        assert where.size > 30
        assert np.all(where < nl) if name.startswith("L_") else np.all(where >= nl)
    # subjects' regions differ slightly but overlap mostly
    a, b = gt.responsive["sim01"], gt.responsive["sim02"]
    assert (a != b).any() and (a & b).sum() > 0.5 * a.sum()
    y = ds.responses("sim01", ds.train_stories[0])
    assert y.shape[1] == 20484


def test_bad_arguments_are_named():
    with pytest.raises(ValidationError, match="test_story"):
        _small(test_story="nosuchstory")
    with pytest.raises(ValidationError, match="snr"):
        _small(snr=0)
    with pytest.raises(ValidationError, match="not corpus stories"):
        _small(stories=["theflood", "nope"])

    def bad(story):
        return np.zeros((story.n_words + 1, 3))

    with pytest.raises(ValidationError, match="feature source"):
        _small(features=bad)


def test_load_simulated_registry_and_subset():
    ds = load("simulated", subjects=["sim02"], n_subjects=2, stories=2, space=100, features=word_embedding_features(4))
    assert ds.subjects == ["sim02"]
    assert ds.ground_truth.snr == 1.0


def test_minilm_feature_source_is_causal_and_cached():
    from brainalign.config import cache_dir
    from brainalign.features import minilm_features
    from brainalign.stimulus import Story

    words = "the old man walked slowly down to the harbour to watch the boats".split()
    on = np.arange(len(words)) * 0.4
    st = Story("tiny", words, on, on + 0.3, 2.0, np.arange(4) * 2.0)
    src = minilm_features(layer=3)
    x = src(st)
    assert x.shape == (len(words), 384) and np.all(np.isfinite(x))
    assert list((cache_dir() / "simulated").glob("minilm-tiny-*.npy"))
    # changing a later word does not change an earlier word's features (left context only)
    st2 = st.replace(words=tuple(words[:-1] + ["gulls"]))
    y = minilm_features(layer=3, cache=False)(st2)
    np.testing.assert_allclose(x[:-1], y[:-1], atol=1e-4)
    assert not np.allclose(x[-1], y[-1], atol=1e-3)
    # the same word in different contexts gets different features
    assert not np.allclose(x[0], x[7], atol=1e-3)


def test_stacked_responses_are_cached_read_only_and_bounded(monkeypatch):
    from brainalign.datasets import simulate
    from brainalign.datasets.simulated import word_embedding_features
    from brainalign.timing import zscore_per_story

    ds = simulate(n_subjects=1, stories=4, space=100, features=word_embedding_features(4))
    calls = []
    original = ds.responses
    monkeypatch.setattr(ds, "responses", lambda s, st: calls.append(st) or original(s, st))
    train = ds.train_stories
    a = ds.stacked_responses("sim01", train)
    blocks = [original("sim01", st) for st in train]
    np.testing.assert_allclose(a, zscore_per_story(np.vstack(blocks), [len(b) for b in blocks]), atol=1e-6)
    assert not a.flags.writeable and len(calls) == len(train)
    assert ds.stacked_responses("sim01", train) is a and len(calls) == len(train)  # served from memory
    monkeypatch.setenv("BRAINALIGN_RESPONSE_CACHE_MB", "0")
    b = ds.stacked_responses("sim01", train, zscore=False)
    assert ds.stacked_responses("sim01", train, zscore=False) is not b  # over budget: not kept


def test_several_test_stories_are_each_repeated_and_held_out():
    ds = _small(stories=4, test_story=["thelighthousekeeper", "theflood"])
    assert ds.test_stories == ["thelighthousekeeper", "theflood"]
    assert len(ds.train_stories) == 2 and not set(ds.train_stories) & set(ds.test_stories)
    for st in ds.test_stories:
        assert ds.has_repeats(ds.subjects[0], st)
    assert not ds.has_repeats(ds.subjects[0], ds.train_stories[0])
    with pytest.raises(ValidationError, match="stories must be >= 3"):
        _small(stories=2, test_story=["thelighthousekeeper", "theflood"])
    with pytest.raises(ValidationError, match="several different"):
        _small(test_story=["theflood", "theflood"])


def test_simulated_reaches_no_later_stage_and_loads_lazily():
    """Importing the datasets package imports no adapter; the simulated adapter imports no
    features code until a MiniLM source is asked for."""
    import subprocess
    import sys

    code = (
        "import sys, brainalign.datasets as d\n"
        "assert 'brainalign.datasets.simulated' not in sys.modules\n"
        "from brainalign.datasets import simulated\n"
        "assert not [m for m in sys.modules if m.startswith(('brainalign.features', 'brainalign.encoding', "
        "'brainalign.sweep'))], sorted(sys.modules)\n"
        "ds = d.load('simulated', n_subjects=1, stories=2, space=40, features='random:3')\n"
        "assert 'brainalign.features' not in sys.modules\n"
        "assert d.simulate is simulated.simulate\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_feature_source_names_and_moved_minilm():
    from brainalign.datasets import simulated
    from brainalign.features import minilm_features

    ds = _small(features="random:16")
    np.testing.assert_array_equal(ds.responses("sim01", "theflood"), _small().responses("sim01", "theflood"))
    assert ds.info["feature_source"] == "random word-type embedding (dim=16, seed=0)"
    for bad in ("minilm:x", "glove", 3):
        with pytest.raises(ValidationError, match=r"'minilm\[:layer\]' or 'random\[:dim\]'"):
            _small(features=bad)
    with pytest.warns(DeprecationWarning, match="moved to brainalign.features.minilm_features"):
        assert simulated.minilm_features is minilm_features


def test_ground_truth_is_keyword_only_and_subsets_keep_it():
    from brainalign.datasets.simulated import GroundTruth, SimulatedDataset

    with pytest.raises(TypeError):
        GroundTruth({}, {}, {}, 1.0, {}, {}, {}, np.zeros((2, 1)), {}, np.ones(3), "x", 0.5, 3, 4, 0)
    ds = _small(n_subjects=3)
    sub = ds.subset(["sim03", "sim01"])
    assert type(sub) is SimulatedDataset and sub.subjects == ["sim03", "sim01"]
    assert sub.ground_truth is ds.ground_truth
    np.testing.assert_array_equal(sub.responses("sim03", "theflood"), ds.responses("sim03", "theflood"))
    with pytest.raises(KeyError, match="no subject 'sim02'"):
        sub.responses("sim02", "theflood")
