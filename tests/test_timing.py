import numpy as np
import pytest

from brainalign import Story, ValidationError
from brainalign.timing import (
    Delayer,
    StoryKFold,
    lanczos_kernel,
    lanczos_resample,
    phoneme_rate,
    trim,
    word_rate,
    zscore_per_story,
)


def _naive_lanczos(values, times, new_times, window=3, cutoff_mult=1.0):
    """The definition in shared/reference/datasets.md, written as plainly as possible."""
    cutoff = cutoff_mult / np.mean(np.diff(new_times))
    out = np.zeros((len(new_times), values.shape[1]))
    for k, tk in enumerate(new_times):
        for w, tw in enumerate(times):
            x = (tk - tw) * cutoff
            if x == 0:
                L = 1.0
            elif abs(x) > window:
                L = 0.0
            else:
                L = window * np.sin(np.pi * x) * np.sin(np.pi * x / window) / (np.pi * x) ** 2
            out[k] += L * values[w]
    return out


@pytest.mark.parametrize("window,cutoff_mult", [(3, 1.0), (2, 0.5), (5, 1.3)])
def test_lanczos_matches_definition(rng, window, cutoff_mult):
    times = np.sort(rng.uniform(0, 100, 300))
    new_times = 2.0 * np.arange(45) + 1.0
    values = rng.standard_normal((300, 7))
    got = lanczos_resample(values, times, new_times, window=window, cutoff_mult=cutoff_mult)
    want = _naive_lanczos(values, times, new_times, window, cutoff_mult)
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-10)


def test_lanczos_is_a_sum_not_a_mean(rng):
    # doubling every word (same times) doubles the output: an unnormalised sum
    times = np.sort(rng.uniform(0, 50, 80))
    new_times = 2.0 * np.arange(25)
    v = rng.standard_normal((80, 2))
    once = lanczos_resample(v, times, new_times)
    twice = lanczos_resample(np.repeat(v, 2, axis=0), np.repeat(times, 2), new_times)
    np.testing.assert_allclose(twice, 2 * once, atol=1e-12)


def test_lanczos_hand_cases():
    new_times = np.array([0.0, 2.0, 4.0, 6.0, 8.0, 10.0, 12.0, 14.0, 16.0])
    # a word exactly at a TR time adds weight 1 there, and 0 at other TR times (zeros of sinc)
    out = lanczos_resample(np.array([5.0]), np.array([8.0]), new_times)
    np.testing.assert_allclose(out, [0, 0, 0, 0, 5.0, 0, 0, 0, 0], atol=1e-12)
    # a word farther than 3 lobes (3 TRs = 6 s) from a TR time adds nothing there
    out = lanczos_resample(np.array([1.0]), np.array([7.0]), new_times)
    far = np.abs(new_times - 7.0) > 6.0
    assert np.all(out[far] == 0)
    assert np.all(out[~far] != 0)
    assert lanczos_kernel(np.array([0.0]))[0] == 1.0
    assert lanczos_kernel(np.array([3.0001, -4.0])).tolist() == [0.0, 0.0]


def test_lanczos_errors():
    with pytest.raises(ValidationError, match="times must be non-decreasing"):
        lanczos_resample(np.ones(3), np.array([0.0, 2.0, 1.0]), np.arange(5.0))
    with pytest.raises(ValidationError, match="values contain non-finite"):
        lanczos_resample(np.array([1.0, np.nan]), np.array([0.0, 1.0]), np.arange(5.0))
    with pytest.raises(ValidationError, match="times has shape"):
        lanczos_resample(np.ones((3, 2)), np.array([0.0, 1.0]), np.arange(5.0))
    with pytest.raises(ValidationError, match="new_times must be non-decreasing"):
        lanczos_resample(np.ones(2), np.array([0.0, 1.0]), np.array([3.0, 1.0]))


def test_delayer_two_stories(rng):
    lengths = [7, 5]
    X = rng.standard_normal((12, 3))
    delays = (0, 1, 2, 4)
    out = Delayer(delays).fit_transform(X, story_lengths=lengths)
    assert out.shape == (12, 3 * len(delays))
    for i, d in enumerate(delays):
        block = out[:, 3 * i : 3 * i + 3]
        for a, b in ((0, 7), (7, 12)):
            n = b - a
            expected = np.zeros((n, 3))
            if d < n:
                expected[d:] = X[a : b - d]
            np.testing.assert_array_equal(block[a:b], expected)
    # no story: the whole input is one story; constructor story_lengths also work
    one = Delayer((1,)).fit_transform(X)
    np.testing.assert_array_equal(one[1:], X[:-1])
    assert np.all(one[0] == 0)
    np.testing.assert_array_equal(Delayer(delays, story_lengths=lengths).fit_transform(X), out)


def test_delayer_negative_delay_and_errors(rng):
    X = rng.standard_normal((6, 2))
    out = Delayer((-1,)).fit_transform(X, story_lengths=[3, 3])
    np.testing.assert_array_equal(out[[0, 1, 3, 4]], X[[1, 2, 4, 5]])
    assert np.all(out[[2, 5]] == 0)
    with pytest.raises(ValidationError, match="story_lengths sum to 5"):
        Delayer().fit_transform(X, story_lengths=[2, 3])
    with pytest.raises(ValidationError, match="2-D"):
        Delayer().fit_transform(np.ones(5))


def test_delayer_in_sklearn_pipeline(rng):
    from sklearn.linear_model import Ridge
    from sklearn.pipeline import make_pipeline

    X = rng.standard_normal((50, 3))
    y = np.r_[0, X[:-1, 0]]  # y depends on X one TR earlier
    pipe = make_pipeline(Delayer((1,)), Ridge(alpha=1e-6)).fit(X, y)
    assert pipe.score(X, y) > 0.999


def test_trim_and_zscore(rng):
    x = np.arange(20.0)[:, None]
    np.testing.assert_array_equal(trim(x, 5, 5)[:, 0], np.arange(5.0, 15.0))
    with pytest.raises(ValidationError, match="cannot trim"):
        trim(x, 10, 10)
    X = np.vstack([rng.normal(5, 2, (30, 4)), rng.normal(-3, 0.1, (20, 4)), np.ones((10, 4))])
    Z = zscore_per_story(X, [30, 20, 10])
    for a, b in ((0, 30), (30, 50)):
        np.testing.assert_allclose(Z[a:b].mean(0), 0, atol=1e-12)
        np.testing.assert_allclose(Z[a:b].std(0), 1, atol=1e-12)
    assert np.all(Z[50:] == 0)  # a constant column is 0, not NaN


def test_story_kfold_leaves_whole_stories_out():
    lengths = [10, 12, 8, 9, 11, 7, 10]
    cv = StoryKFold(n_splits=3)
    splits = list(cv.split(lengths))
    assert len(splits) == 3
    bounds = np.r_[0, np.cumsum(lengths)]
    story_of = np.repeat(np.arange(len(lengths)), lengths)
    seen = np.zeros(sum(lengths), int)
    for train, val in splits:
        assert set(story_of[train]).isdisjoint(story_of[val])
        assert len(train) + len(val) == bounds[-1]
        seen[val] += 1
    assert np.all(seen == 1)  # every TR validated exactly once
    again = list(StoryKFold(n_splits=3).split(lengths))
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(splits, again))
    s1 = [v for _, v in StoryKFold(3, shuffle=True, random_state=1).split(lengths)]
    s2 = [v for _, v in StoryKFold(3, shuffle=True, random_state=1).split(lengths)]
    assert all(np.array_equal(a, b) for a, b in zip(s1, s2))
    # shuffle=True deals the stories in a seeded random order: other folds than in order,
    # other folds for another seed, still whole stories, still as balanced
    assert not all(np.array_equal(a, b[1]) for a, b in zip(s1, splits))
    orders = {tuple(StoryKFold(3, shuffle=True, random_state=r).fold_of_story(7)) for r in range(4)}
    assert len(orders) > 1 and (0, 1, 2, 0, 1, 2, 0) not in orders
    for order in orders:
        assert sorted(np.bincount(order)) == [2, 2, 3]
    seen = np.zeros(sum(lengths), int)
    for val in s1:
        assert all(set(story_of[val]) & set(story_of[other]) == set() for other in s1 if other is not val)
        assert np.isin(np.flatnonzero(np.isin(story_of, story_of[val])), val).all()  # whole stories
        seen[val] += 1
    assert np.all(seen == 1)
    with pytest.raises(ValidationError, match="n_splits=5 needs at least"):
        list(StoryKFold(5).split([10, 10]))


def _story(**kw):
    base = dict(
        name="s",
        words=["a", "b", "c", "d"],
        onsets=[0.5, 1.0, 1.6, 7.0],
        offsets=[0.9, 1.5, 2.0, 7.4],
        tr=2.0,
        tr_times=2.0 * np.arange(6) + 1.0,
    )
    base.update(kw)
    return Story(**base)


def test_word_and_phoneme_rate():
    s = _story(phones=(["x"] * 6, [0.5, 0.7, 1.0, 1.2, 1.6, 7.0], [0.7, 0.9, 1.2, 1.5, 2.0, 7.4]))
    counts = word_rate(s, method="count")
    # TR bins [0,2) [2,4) ... word midpoints 0.7, 1.25, 1.8, 7.2
    np.testing.assert_array_equal(counts, [3, 0, 0, 1, 0, 0])
    np.testing.assert_allclose(word_rate(s), lanczos_resample(np.ones(4), s.word_times, s.tr_times))
    assert phoneme_rate(s, method="count").tolist() == [5, 0, 0, 1, 0, 0]
    with pytest.raises(ValidationError, match="no phone tier"):
        phoneme_rate(_story())
