"""Noise ceiling with per-repeat z-scoring, and variance partitioning without a phone tier."""

import logging

import numpy as np
import pytest

from brainalign import Story, ValidationError
from brainalign.encoding import baseline_design, noise_ceiling, partition_variance
from brainalign.features import WordFeatures, design
from brainalign.timing import Delayer, word_rate, zscore

N_REP, N_TRS, N_TARGETS = 4, 300, 2000


def _repeats(rng, ev, gains, offsets=True):
    """Shared signal of variance ev / (1 - ev) plus unit-variance independent noise per
    repeat, each repeat scaled by its gain (signal and noise alike) and offset."""
    s = rng.standard_normal((N_TRS, N_TARGETS)) * np.sqrt(ev / (1 - ev))
    off = rng.normal(0, 3, (N_REP, 1, N_TARGETS)) if offsets else 0.0
    return np.stack([s + rng.standard_normal((N_TRS, N_TARGETS)) for _ in range(N_REP)]) * gains + off


def _truth(ev):
    """True EV of one presentation and true CCmax against the mean of N_REP repeats."""
    return {"ev": ev, "ccmax": np.sqrt(ev / (ev + (1 - ev) / N_REP))}


@pytest.mark.parametrize("per_target", [False, True])
def test_noise_ceiling_unbiased_under_repeat_gains(per_target):
    before = {"ev": [], "ccmax": []}
    after = {"ev": [], "ccmax": []}
    ev = 0.3
    for seed in range(3):
        rng = np.random.default_rng(seed)
        shape = (N_REP, 1, N_TARGETS) if per_target else (N_REP, 1, 1)
        reps = _repeats(rng, ev, rng.uniform(0.5, 2.0, shape))
        for m, truth in _truth(ev).items():
            before[m].append(np.nanmean(noise_ceiling(reps, method=m, zscore=False)) - truth)
            after[m].append(np.nanmean(noise_ceiling(reps, method=m)) - truth)  # default "auto"
    for m in ("ev", "ccmax"):
        assert abs(np.mean(after[m])) <= 0.01, (m, after[m])
        assert np.mean(before[m]) < -0.015, (m, before[m])  # the bias the default removes


def test_noise_ceiling_unbiased_across_signal_levels():
    for ev in (0.1, 0.6):
        gained = _repeats(np.random.default_rng(7), ev, np.random.default_rng(8).uniform(0.5, 2.0, (N_REP, 1, 1)))
        equal = _repeats(np.random.default_rng(7), ev, np.ones((N_REP, 1, 1)))  # same signal and noise
        for m, truth in _truth(ev).items():
            bias = np.nanmean(noise_ceiling(gained, method=m)) - truth
            assert abs(bias) <= 0.01, (ev, m, bias)
            # what is left (CCmax at low SNR: about -0.008, a sqrt of a noisy ratio) is the
            # estimator's own, as large with equal gains: the gains add nothing
            assert abs(bias - (np.nanmean(noise_ceiling(equal, method=m)) - truth)) < 0.002, (ev, m)


@pytest.mark.parametrize("method", ["ev", "ccmax"])
def test_noise_ceiling_equal_gains_unchanged(method):
    rng = np.random.default_rng(3)
    raw = _repeats(rng, 0.3, np.ones((N_REP, 1, 1)), offsets=False)
    z = np.stack([zscore(x) for x in raw]).astype(np.float32)
    today = noise_ceiling(z, method=method, zscore=False)
    # already z-scored: "auto" leaves the data alone, bit for bit
    np.testing.assert_array_equal(noise_ceiling(z, method=method), today)
    # a common gain and per-repeat offsets: z-scoring gives today's value to float precision
    shifted = 2.5 * z + rng.normal(0, 5, (N_REP, 1, N_TARGETS))
    np.testing.assert_allclose(noise_ceiling(shifted, method=method), today, atol=1e-5)
    np.testing.assert_allclose(noise_ceiling(shifted, method=method, zscore=False), today, atol=1e-5)
    # equal true gains on raw data: only each repeat's sample sd differs
    a, b = noise_ceiling(raw, method=method, zscore=False), noise_ceiling(raw, method=method)
    assert np.nanmax(np.abs(a - b)) < 0.01 and abs(np.nanmean(a - b)) < 1e-3


def test_noise_ceiling_zscore_option():
    rng = np.random.default_rng(1)
    z = np.stack([zscore(x) for x in _repeats(rng, 0.3, np.ones((N_REP, 1, 1)))[:, :, :50]])
    z[:, :, 0] = 0.0  # a constant target (medial wall) does not count as "not z-scored"
    c = noise_ceiling(z)
    np.testing.assert_array_equal(c, noise_ceiling(z, zscore=False))
    assert np.isnan(c[0]) and np.isfinite(c[1:]).all()
    gained = z * np.array([0.5, 1.0, 1.5, 2.0])[:, None, None]
    np.testing.assert_allclose(noise_ceiling(gained, zscore=True), c, atol=1e-5, equal_nan=True)
    assert np.nanmean(noise_ceiling(gained, zscore=False)) < np.nanmean(c) - 0.01
    with pytest.raises(ValidationError, match="zscore"):
        noise_ceiling(z, zscore="yes")
    with pytest.raises(ValidationError, match="method"):
        noise_ceiling(z, method="r2")


# ----------------------------------------------------------------- variance partitioning
def _fallback_logged(caplog):
    return any(r.levelno == logging.WARNING and "no phone tier" in r.getMessage() for r in caplog.records)


def test_partition_default_baselines_on_simulated(caplog):
    from brainalign.datasets import load
    from brainalign.datasets.simulated import word_embedding_features

    ds = load("simulated", n_subjects=1, stories=4, space=200, features="random:8", snr=2.0, seed=0)
    assert all(ds.stories[s].phones is None for s in ds.stories)
    src = word_embedding_features(8)  # what "random:8" planted the signal from
    wf = WordFeatures("random8", None, [1], 1, lambda s, layer: src(ds.stories[s]), list(ds.stories))
    with caplog.at_level(logging.WARNING, logger="brainalign.encoding.partition"):
        out = partition_variance(wf, ds, layer=1, backend="numpy", n_iter=5, n_folds=3)
    assert _fallback_logged(caplog)
    assert out.attrs["baselines"] == ["word_rate"]
    assert out.attrs["baselines_note"].startswith("word rate (no phone tier")
    subj = ds.subjects[0]
    assert dict(out.sizes) == {"subject": 1, "target": 200}
    for k in ("r2_joint", "r2_lm", "r2_baseline", "unique_lm", "unique_baseline", "shared"):
        assert np.isfinite(out[k].values).all(), k
    roi = ds.ground_truth.responsive[subj]
    u = out.unique_lm.sel(subject=subj).values
    assert np.median(u[roi]) > 0.3 and abs(np.median(u[~roi])) < 0.02  # the planted LM signal is not word rate


def _write_csv_study(tmp_path, rng, n_stories=5, n_trs=160, n_targets=60):
    """A user's study on disk: CSV transcripts (word,onset,offset; no phone tier) and .npy
    responses. Targets 0-19 follow the LM features, 20-39 follow word rate, 40+ noise."""
    names = [f"story{i}" for i in range(n_stories)]
    vocab = [f"w{i}" for i in range(300)]
    lines = ["name: csvstudy", "tr: 2.0", "onset: 0.0", "tr_reference: middle",
             f"space: {{targets: {n_targets}}}", "stories:"]
    for n in names:
        dur = 2.0 * n_trs - 4.0
        # bursts and pauses, so word rate varies
        t, rows = 0.5, []
        while t < dur:
            if rng.random() < 0.05:
                t += rng.uniform(2, 8)
            else:
                w = vocab[rng.integers(len(vocab))]
                d = rng.uniform(0.15, 0.5)
                if t + d < dur:
                    rows.append(f"{w},{t:.3f},{t + d:.3f}")
                t += d + rng.uniform(0.02, 0.2)
        (tmp_path / f"{n}.csv").write_text("word,onset,offset\n" + "\n".join(rows) + "\n")
        lines.append(f"  {n}: {{transcript: {n}.csv}}")
        np.save(tmp_path / f"sub01_{n}.npy", np.zeros((n_trs, n_targets), np.float32))
    lines += ["subjects:", "  sub01:"] + [f"    {n}: sub01_{n}.npy" for n in names] + [f"test: [{names[-1]}]"]
    (tmp_path / "study.yaml").write_text("\n".join(lines) + "\n")
    return names


def test_partition_default_baselines_on_csv_transcripts(tmp_path, caplog):
    from brainalign.datasets import load
    from brainalign.datasets.simulated import word_embedding_features

    rng = np.random.default_rng(0)
    names = _write_csv_study(tmp_path, rng)
    ds = load("manifest", root=str(tmp_path / "study.yaml"))
    assert all(ds.stories[s].phones is None for s in names)
    src = word_embedding_features(8)
    wf = WordFeatures("random8", None, [1], 1, lambda s, layer: src(ds.stories[s]), names)
    W = rng.standard_normal((8 * 4, 20)) / np.sqrt(32)
    wr_w = rng.uniform(0.5, 1.0, (4, 20))
    for n in names:  # plant the responses on the dataset's own TR grid
        st = ds.stories[n]
        lm = design(wf, [st], 1) @ W
        wr = Delayer((1, 2, 3, 4)).fit_transform(zscore(word_rate(st)[:, None])) @ wr_w
        y = rng.standard_normal((st.n_trs, 60))
        y[:, :20] += 1.5 * zscore(lm)
        y[:, 20:40] += 1.5 * zscore(wr)
        np.save(tmp_path / f"sub01_{n}.npy", y.astype(np.float32))
    ds = load("manifest", root=str(tmp_path / "study.yaml"))
    with caplog.at_level(logging.WARNING, logger="brainalign.encoding.partition"):
        out = partition_variance(wf, ds, layer=1, backend="numpy", n_iter=5, n_folds=4)
    assert _fallback_logged(caplog)
    assert out.attrs["baselines"] == ["word_rate"]
    assert "no phone tier" in out.attrs["baselines_note"] and "5 of 5 stories" in out.attrs["baselines_note"]
    ul = out.unique_lm.sel(subject="sub01").values
    ub = out.unique_baseline.sel(subject="sub01").values
    assert np.median(ul[:20]) > 0.2 and abs(np.median(ul[20:])) < 0.05
    assert np.median(ub[20:40]) > 0.2 and abs(np.median(ub[np.r_[0:20, 40:60]])) < 0.05


def _story(name, phones):
    on = np.arange(0.5, 190.0, 0.4)
    ph = (tuple("p" for _ in on), on, on + 0.1) if phones else None
    return Story(name, tuple(f"w{i}" for i in range(on.size)), on, on + 0.3, 2.0,
                 2.0 * np.arange(100) + 1.0, phones=ph)


def test_baseline_design_default_and_explicit(caplog):
    with_ph = [_story("a", True), _story("b", True)]
    mixed = [_story("a", True), _story("c", False)]
    with caplog.at_level(logging.WARNING, logger="brainalign.encoding.partition"):
        assert baseline_design(with_ph).shape == (200, 8)  # word + phoneme rate, 4 delays
        assert not _fallback_logged(caplog)
        # one story without phones: word rate for all, said so
        assert baseline_design(mixed).shape == (200, 4)
        assert _fallback_logged(caplog)
    np.testing.assert_array_equal(baseline_design(mixed), baseline_design(mixed, ["word_rate"]))
    np.testing.assert_array_equal(baseline_design(mixed, "word_rate"), baseline_design(mixed, ["word_rate"]))
    # asking for phoneme rate explicitly is not overridden: the story is named
    with pytest.raises(ValidationError, match="'c' has no phone tier"):
        baseline_design(mixed, ("word_rate", "phoneme_rate"))
