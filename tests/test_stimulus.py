import numpy as np
import pytest

from brainalign import Responses, Space, Story, ValidationError


def _story(**kw):
    base = dict(name="s", words=["a", "b"], onsets=[0.1, 0.5], offsets=[0.4, 0.9], tr=2.0, tr_times=[1.0, 3.0])
    base.update(kw)
    return Story(**base)


def test_story_validates():
    s = _story()
    assert s.n_words == 2 and s.n_trs == 2
    np.testing.assert_allclose(s.word_times, [0.25, 0.7])
    assert [w.text for w in s] == ["a", "b"]
    with pytest.raises(ValidationError, match="story 's'.*onsets must be non-decreasing"):
        _story(onsets=[0.5, 0.1], offsets=[0.6, 0.9])
    with pytest.raises(ValidationError, match="has no words"):
        _story(words=[], onsets=[], offsets=[])
    with pytest.raises(ValidationError, match=r"onsets\[1\] is not finite"):
        _story(onsets=[0.1, np.nan])
    with pytest.raises(ValidationError, match="2 words but 3 onsets"):
        _story(onsets=[0.1, 0.2, 0.3], offsets=[0.2, 0.3, 0.4])
    with pytest.raises(ValidationError, match="ends at .* before it starts"):
        _story(offsets=[0.05, 0.9])
    with pytest.raises(ValidationError, match="tr must be a positive"):
        _story(tr=0)
    with pytest.raises(ValidationError, match="tr_times must be strictly increasing"):
        _story(tr_times=[1.0, 1.0])
    with pytest.raises(ValidationError, match=r"from file\.TextGrid"):
        _story(words=[], onsets=[], offsets=[], source="from file.TextGrid")


def test_story_equality_and_immutability():
    a, b = _story(), _story()
    assert a == b and a != _story(name="t")
    with pytest.raises(ValueError):
        a.onsets[0] = 3.0


def test_responses_are_lazy_and_validated():
    calls = []

    def loader(arr):
        def f():
            calls.append(1)
            return arr

        return f

    good = np.ones((4, 3), dtype=np.float64)
    r = Responses(
        {
            ("S1", "a"): loader(good),
            ("S1", "b"): loader(np.ones((4, 5))),
            ("S1", "c"): loader(np.full((4, 3), np.nan)),
            ("S1", "d"): loader(np.ones((3, 3))),
        },
        sources={("S1", "b"): "/data/S1/b.hf5", ("S1", "c"): "/data/S1/c.hf5", ("S1", "d"): "/data/S1/d.hf5"},
        n_trs={"a": 4, "b": 4, "c": 4, "d": 4},
    )
    assert calls == []  # nothing read at construction
    assert len(r) == 4 and r.subjects == ["S1"]
    a = r["S1", "a"]
    assert a.dtype == np.float32 and calls == [1]
    with pytest.raises(ValidationError, match=r"/data/S1/b.hf5: has 5 targets but"):
        r["S1", "b"]
    with pytest.raises(ValidationError, match=r"/data/S1/c.hf5: responses contain 12 non-finite"):
        r["S1", "c"]
    with pytest.raises(ValidationError, match=r"/data/S1/d.hf5: has 3 TRs but story 'd' has 4"):
        r["S1", "d"]
    with pytest.raises(KeyError, match="no responses for subject 'S2'"):
        r["S2", "a"]


def test_space():
    fs5 = Space.fsaverage("fsaverage5")
    assert fs5.n_targets == 20484 and fs5.hemi_sizes == (10242, 10242)
    assert Space.fsaverage("fsaverage6").n_targets == 81924
    assert list(fs5.hemi()[[0, 10241, 10242]]) == ["L", "L", "R"]
    mask = np.zeros((4, 4, 4), bool)
    mask[1:3, 1:3, 1:3] = True
    vol = Space.volume("UTS01", mask)
    assert vol.n_targets == 8 and not vol.is_surface
    with pytest.raises(ValidationError, match="unknown surface 'fsaverage9'"):
        Space.fsaverage("fsaverage9")
    with pytest.raises(ValidationError, match="mask selects no voxel"):
        Space.volume("x", np.zeros((2, 2, 2), bool))
    with pytest.raises(ValidationError, match="has 7 targets but space fsaverage5 has 20484"):
        fs5.check(np.zeros((3, 7)), "sub-01")
