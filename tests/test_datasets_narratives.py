import json

import numpy as np
import pytest

from brainalign import DataNotFoundError, ValidationError
from brainalign.cli import main
from brainalign.datasets import load, narratives, simulate
from brainalign.datasets.simulated import word_embedding_features


@pytest.fixture(scope="module")
def sim():
    return simulate(n_subjects=2, stories=3, space=40, features=word_embedding_features(4), grid="narratives",
                    n_repeats=3)


@pytest.fixture
def written(sim, tmp_path):
    sim.to_narratives(tmp_path)
    return tmp_path


def test_round_trip_narratives_layout(sim, written):
    back = load("narratives", written, space=sim.space("sim01").name, test_stories=sim.test_stories)
    assert back.subjects == ["sub-sim01", "sub-sim02"]
    assert back.stories[sim.test_stories[0]].tr == 1.5
    for name, st in sim.stories.items():
        assert back.stories[name] == st  # name, words, onsets, offsets, TR and TR times, exactly
        for subj in sim.subjects:
            np.testing.assert_array_equal(back.responses(f"sub-{subj}", name), sim.responses(subj, name))
    t = sim.test_stories[0]
    np.testing.assert_array_equal(back.repeats("sub-sim01", t), sim.repeats("sim01", t))
    assert back.space("sub-sim01").hemi_sizes == (20, 20)
    assert main(["datasets", "check", "narratives", str(written)]) == 1  # wrong space name: fsaverage6 missing


def test_unsmoothed_is_a_different_pipeline(written, sim):
    with pytest.raises(DataNotFoundError, match="afni-nosmooth"):
        load("narratives", written, space=sim.space("sim01").name, smooth=False)


def test_exclusions_and_onset_shift(written, sim):
    space = sim.space("sim01").name
    (written / "code").mkdir()
    (written / "code" / "scan_exclude.json").write_text(json.dumps({"theflood": ["sub-sim02_task-theflood"]}))
    ds = load("narratives", written, space=space)
    assert ds.stories_of("sub-sim02") == [s for s in ds.stories if s != "theflood"]
    assert "theflood" in ds.stories_of("sub-sim01")
    ds_all = load("narratives", written, space=space, exclude=False)
    assert "theflood" in ds_all.stories_of("sub-sim02")
    # the dataset's own format: {task: {subject: [scan, ...]}}; a prefix excludes only its own task
    (written / "code" / "scan_exclude.json").write_text(json.dumps({"theflood": {"sub-sim02": ["sub-sim02_task-the"]}}))
    assert "theflood" in load("narratives", written, space=space).stories_of("sub-sim02")
    # sub-sim02's scan starts 2 TRs later: aligned by shifting rows, cut to the shared rows (an events file
    # without stim_file, as brainalign wrote before, names its story by the task)
    ev = written / "sub-sim02" / "func" / "sub-sim02_task-theflood_events.tsv"
    ev.write_text("onset\tduration\ttrial_type\n9.0\t1000\tstory\n")
    ds2 = load("narratives", written, space=space, exclude=False)
    st = sim.stories["theflood"]
    assert ds2.stories["theflood"].n_trs == st.n_trs - 2
    np.testing.assert_array_equal(ds2.stories["theflood"].tr_times, st.tr_times[:-2])
    np.testing.assert_array_equal(ds2.responses("sub-sim02", "theflood"), sim.responses("sim02", "theflood")[2:])
    np.testing.assert_array_equal(ds2.responses("sub-sim01", "theflood"), sim.responses("sim01", "theflood")[:-2])


def _gentle(path, entries):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"transcript": " ".join(e["word"] for e in entries), "words": entries}))


def test_gentle_not_found_words_interpolated_or_dropped(tmp_path):
    ok = lambda w, a, b: {"word": w, "alignedWord": w, "case": "success", "start": a, "end": b}  # noqa: E731
    nf = lambda w: {"word": w, "case": "not-found-in-audio"}  # noqa: E731
    entries = [nf("Well"), ok("the", 1.0, 1.2), nf("uh"), nf("big"), ok("dog", 2.0, 2.4), nf("ran")]
    p = tmp_path / "align.json"
    _gentle(p, entries)
    words, on, off = narratives.read_gentle(p)
    assert words == ["Well", "the", "uh", "big", "dog", "ran"]
    np.testing.assert_allclose(on, [0.75, 1.0, 1.2, 1.6, 2.0, 2.4])
    np.testing.assert_allclose(off, [1.0, 1.2, 1.6, 2.0, 2.4, 2.65])
    words, on, _ = narratives.read_gentle(p, not_found="drop")
    assert words == ["the", "dog"] and list(on) == [1.0, 2.0]
    _gentle(p, [{"word": "x", "alignedWord": "<unk>", "case": "success", "start": 0.5, "end": 0.7}])
    assert narratives.read_gentle(p)[0] == ["x"]
    p.write_text('{"nope": 1}')
    with pytest.raises(ValidationError, match=r"align\.json: not a Gentle"):
        narratives.read_gentle(p)
    with pytest.raises(ValidationError, match="not_found"):
        narratives.read_gentle(p, not_found="keep")


def test_hemisphere_length_mismatch_is_named(written, sim):
    import nibabel as nib

    f = next((written / "derivatives" / "afni-smooth" / "sub-sim01" / "func").glob("*task-theflood*hemi-R*"))
    img = nib.load(str(f))
    nib.save(nib.GiftiImage(darrays=img.darrays[:-1]), str(f))
    with pytest.raises(ValidationError, match=r"hemi-R_desc-sm6\.func\.gii: has \d+ TRs but"):
        load("narratives", written, space=sim.space("sim01").name)


def test_missing_transcript_is_named(written, sim):
    (written / "stimuli" / "gentle" / "theflood" / "align.json").unlink()
    with pytest.raises(DataNotFoundError, match=r"theflood/align\.json does not exist"):
        load("narratives", written, space=sim.space("sim01").name)
    rep = narratives.check(written, space=sim.space("sim01").name)
    assert not rep["ok"] and "stimuli/gentle/theflood/align.json" in rep["missing"]
