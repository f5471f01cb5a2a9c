"""Narratives on the rows of all 873 real ds002345 ``events.tsv`` files.

The rows (path, onset, duration, trial_type, stim_file) are ``datasets/ds002345-events.tsv``
(a copy of ``../shared/reference/ds002345-events.tsv``, read from there when the copy is
absent). The facts they are checked against are in that reference's ``datasets.md``: a
story is its wav, its time zero is the first row playing that wav, a scan can hold
several stories, and only a subject's runs of one wav are repeats.
"""

import csv
import json
import math
import re
from collections import defaultdict
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from brainalign import DataNotFoundError, ValidationError
from brainalign.cli import main
from brainalign.datasets import load, narratives
from brainalign.datasets.narratives import HRF_LAG, TR, parse_events, plan, story_segments

NAME = "ds002345-events.tsv"
_HERE = Path(__file__).resolve()
REF = next((p for p in (_HERE.parents[1] / "datasets" / NAME, _HERE.parents[2] / "shared" / "reference" / NAME)
            if p.is_file()), None)
pytestmark = pytest.mark.skipif(
    REF is None, reason=f"{NAME} (the rows of ds002345's events files) is in neither datasets/ nor ../shared/reference")

_KEY = re.compile(r"(sub-[^_]+)_task-([^_]+)(?:_run-(\d+))?_events\.tsv$")


def _stem(stim_file):
    return stim_file[: -len("_audio.wav")]


@pytest.fixture(scope="module")
def scans():
    """events path -> its rows (dicts with onset, duration, trial_type, stim_file), in file order."""
    out = defaultdict(list)
    with open(REF, newline="") as f:
        for r in csv.DictReader(f, delimiter="\t"):
            out[r.pop("path")].append(r)
    assert len(out) == 873
    return dict(out)


def _key(path):
    m = _KEY.search(path)
    return m.group(1), m.group(2), int(m.group(3) or 1)


def _n_trs(records):
    """A scan long enough to hold every row, and 10 s more."""
    return math.ceil((max(float(r["onset"]) + float(r["duration"]) for r in records) + 10) / TR)


def _expected(records):
    """wav stem -> time zero (onset of the first row playing it), for the wavs story rows name, in order."""
    stems = list(dict.fromkeys(_stem(r["stim_file"]) for r in records if r["trial_type"] == "story"))
    return {s: next(float(r["onset"]) for r in records if r["stim_file"] == f"{s}_audio.wav") for s in stems}


@pytest.fixture(scope="module")
def segments(scans):
    return {_key(p): story_segments(parse_events(rs, _key(p)[1], where=p), _n_trs(rs), where=p)
            for p, rs in scans.items()}


def test_every_scan_gives_the_stories_its_story_rows_name_from_the_first_row_of_their_wav(scans, segments):
    first_row_zero = 0
    for path, records in scans.items():
        segs, want = segments[_key(path)], _expected(records)
        assert [s.stem for s in segs] == list(want), path
        for seg in segs:
            assert seg.zero == want[seg.stem], path
            first_row_zero += seg.zero == float(records[0]["onset"])
            t = np.arange(seg.start, seg.stop) * TR  # scan times of the kept TRs
            np.testing.assert_allclose(seg.tr_times(), t - want[seg.stem], rtol=0, atol=1e-9)
            own = [r for r in records if r["stim_file"] == f"{seg.stem}_audio.wav"]
            other = [r for r in records if r not in own]
            begin, end = float(own[0]["onset"]), max(float(r["onset"]) + float(r["duration"]) for r in own)
            assert t[0] <= begin and t[-1] >= end - TR, path  # all of its rows are kept
            assert t[-1] < end + HRF_LAG, path  # and at most HRF_LAG s past them
            for r in other:  # no TR inside another story's or a movie's row
                a = float(r["onset"])
                assert not np.any((t >= a) & (t < a + float(r["duration"]))), (path, seg.stem, r)
            assert seg.story_rows == tuple((float(r["onset"]), float(r["onset"]) + float(r["duration"]))
                                           for r in own if r["trial_type"] == "story")
    # datasets.md: the first row is a story in 224 scans and music from the story's wav in 525 of them
    assert first_row_zero == 224 + 525
    schema = [k for k in segments if k[1] == "schema"]
    assert len(schema) == 124 and all(len(segments[k]) == 2 for k in schema)
    assert sum(len(v) for v in segments.values()) == 873 + 124


def test_plan_of_all_scans_tr_times_agree_with_each_scans_onset(segments):
    pl = plan(segments)
    assert len(set(pl.stems.values())) == 28  # 28 stories: the wavs, not the 19 tasks
    for (subj, name), parts in pl.presentations.items():
        for p in parts:
            own = np.arange(p.start, p.stop) * TR - p.segment.zero
            assert np.max(np.abs(own - pl.tr_times[name])) < 1e-9, (subj, name, p.scan)
            assert p.segment.stem == pl.stems[name]
    # the schema stories start a fraction of a TR into a TR: each onset is its own grid
    assert pl.names_of("shame") and all(n.startswith("shame@") for n in pl.names_of("shame"))
    assert pl.names_of("pieman") == ["pieman"]


def test_repeats_are_only_one_subjects_runs_of_one_wav(scans, segments):
    pl = plan(segments)
    repeated = {k: ps for k, ps in pl.presentations.items() if len(ps) > 1}
    assert {name for _, name in repeated} == {"pieman"}
    assert len(repeated) == 14  # the subjects with pieman run-1 and run-2
    for (subj, _), ps in repeated.items():
        assert sorted(p.scan for p in ps) == [(subj, "pieman", 1), (subj, "pieman", 2)]
    # every subject has exactly the wavs its rows play, each once (a milkyway subject: its own recording)
    heard = defaultdict(set)
    for path, records in scans.items():
        heard[_key(path)[0]] |= {_stem(r["stim_file"]) for r in records if r["trial_type"] == "story"}
    got = defaultdict(list)
    for subj, name in pl.presentations:
        got[subj].append(pl.stems[name])
    assert {s: sorted(v) for s, v in got.items()} == {s: sorted(v) for s, v in heard.items()}
    milky = {s: v for s, v in got.items() if any(x.startswith("milkyway") for x in v)}
    assert len(milky) == 53 and all(len([x for x in v if x.startswith("milkyway")]) == 1 for v in milky.values())


def test_rows_of_one_wav_that_overlap_are_warned_about(scans, caplog):
    path = "sub-038/func/sub-038_task-milkyway_events.tsv"  # story row at 15 s inside the music (0-18 s)
    segs = story_segments(parse_events(scans[path], "milkyway", where=path), _n_trs(scans[path]), where=path)
    assert [s.zero for s in segs] == [0.0]
    assert "starts before its music row" in caplog.text and "sub-038_task-milkyway" in caplog.text


def test_bad_events_are_named():
    with pytest.raises(ValidationError, match=r"x\.tsv: row 1: onset 'soon' is not a number"):
        parse_events([{"onset": "soon", "duration": "1", "trial_type": "story", "stim_file": "a_audio.wav"}], "t",
                     where="x.tsv")
    with pytest.raises(ValidationError, match=r"x\.tsv: row 1 is a story row with no stim_file"):
        parse_events([{"onset": "1", "duration": "1", "trial_type": "story", "stim_file": "n/a"}], "t", where="x.tsv")
    with pytest.raises(ValidationError, match=r"x\.tsv: no 'story' row"):
        parse_events([{"onset": "1", "duration": "1", "trial_type": "movie", "stim_file": "n/a"}], "t", where="x.tsv")


# ------------------------------------------------------------ the adapter on real rows
def _pick(scans):
    """Scans that cover the cases: pieman runs, each milkyway recording, schema, slumlordreach, tunnel."""
    paths = sorted(scans)
    by_task = defaultdict(list)
    for p in paths:
        by_task[_key(p)[1]].append(p)
    pieman_sub = next(_key(p)[0] for p in by_task["pieman"] if _key(p)[2] == 2)
    pick = [p for p in by_task["pieman"] if _key(p)[0] == pieman_sub]
    for wav in ("milkywayoriginal", "milkywayvodka", "milkywaysynonyms"):
        pick.append(next(p for p in by_task["milkyway"] if scans[p][0]["stim_file"] == f"{wav}_audio.wav"
                         and float(scans[p][1]["onset"]) == 21.0))
    schema_sub = _key(by_task["schema"][0])[0]
    pick += [p for p in by_task["schema"] if _key(p)[0] == schema_sub]
    pick += [by_task["slumlordreach"][0], by_task["tunnel"][0]]
    return pick


def _gifti(path, n_trs, sign):
    """Vertex values that say which TR of the scan a row is: (k, 2k, 3k) (left), negated (right)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = [nib.gifti.GiftiDataArray(sign * np.array([k, 2 * k, 3 * k], np.float32)) for k in range(n_trs)]
    nib.save(nib.GiftiImage(darrays=arrays), str(path))


def _transcript(root, stem, rows):
    """A word every 2 s inside the story rows (seconds from the wav's start), each named after its wav."""
    zero = min(float(r["onset"]) for r in rows)
    spans = [(float(r["onset"]) - zero, float(r["onset"]) + float(r["duration"]) - zero)
             for r in rows if r["trial_type"] == "story"]
    times = [t for a, b in spans for t in np.arange(a + 0.5, b - 1, 2.0)]
    words = [{"word": f"{stem}{i}", "alignedWord": f"{stem}{i}", "case": "success", "start": float(t),
              "end": float(t) + 0.4} for i, t in enumerate(times)]
    p = root / "stimuli" / "gentle" / stem / "align.json"
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps({"transcript": " ".join(w["word"] for w in words), "words": words}))


@pytest.fixture(scope="module")
def real_rows(scans, tmp_path_factory):
    """A ds002345 tree of the picked scans: their real events rows, tiny GIfTI series, synthetic transcripts."""
    root = tmp_path_factory.mktemp("ds002345")
    picked = _pick(scans)
    wav_rows = {}
    for path in picked:
        records = scans[path]
        ev = root / path
        ev.parent.mkdir(parents=True, exist_ok=True)
        with open(ev, "w", newline="") as f:
            w = csv.DictWriter(f, ["onset", "duration", "trial_type", "stim_file"], delimiter="\t")
            w.writeheader()
            w.writerows(records)
        stem = Path(path).name.replace("_events.tsv", "")
        func = root / "derivatives" / "afni-smooth" / path.split("/")[0] / "func"
        for hemi, sign in (("L", 1), ("R", -1)):
            _gifti(func / f"{stem}_space-tiny_hemi-{hemi}_desc-sm6.func.gii", _n_trs(records), sign)
        for r in records:
            if r["stim_file"] != "n/a":
                wav_rows.setdefault(_stem(r["stim_file"]), {}).setdefault(path, []).append(r)
    for stem, by_path in wav_rows.items():
        _transcript(root, stem, next(iter(by_path.values())))
    return root, {path: scans[path] for path in picked}


def _tiny(root, **kw):
    return load("narratives", root, space="tiny", **kw)


def test_each_picked_scan_loads_its_stories_on_its_own_onset(real_rows):
    root, picked = real_rows
    ds = _tiny(root)
    for path, records in picked.items():
        subj = path.split("/")[0]
        scan = Path(path).name.replace("_events.tsv", "")
        for stem, zero in _expected(records).items():
            names = [n for n in ds.stories_of(subj) if ds.info["audio"][n] == stem]
            assert len(names) == 1, (path, stem)
            name = names[0]
            st = ds.stories[name]
            assert st.words[0] == f"{stem}0" and all(w.startswith(stem) for w in st.words)
            runs = ds.info["scans"][f"{subj}/{name}"]
            rep = ds.repeats(subj, name)
            y = ds.responses(subj, name) if rep is None else rep[runs.index(scan)]
            k = y[:, 0].astype(np.float64)  # left vertex 0 holds the scan's TR index (an integer)
            np.testing.assert_array_equal(y[:, 3], -k)
            assert np.max(np.abs(k * TR - zero - st.tr_times)) < 1e-9, (path, name)


def test_milkyway_recordings_are_three_stories_with_their_own_words(real_rows):
    root, picked = real_rows
    ds = _tiny(root, tasks=["milkyway"])
    assert sorted(ds.stories) == ["milkywayoriginal", "milkywaysynonyms", "milkywayvodka"]
    for path, records in picked.items():
        if "task-milkyway" in path:
            wav = _stem(records[0]["stim_file"])
            assert ds.stories_of(path.split("/")[0]) == [wav]
            assert set(ds.stories[wav].words) == {f"{wav}{i}" for i in range(ds.stories[wav].n_words)}
    assert not any(ds.has_repeats(s, n) for s in ds.subjects for n in ds.stories_of(s))
    vodka = _tiny(root, stories=["milkywayvodka"])
    assert list(vodka.stories) == ["milkywayvodka"] and len(vodka.subjects) == 1


def test_schema_runs_give_two_stories_each(real_rows):
    root, picked = real_rows
    ds = _tiny(root, tasks=["schema"])
    schema = [p for p in picked if "task-schema" in p]
    assert len(schema) == 4 and len(ds.stories) == 8
    for path in schema:
        stems = list(_expected(picked[path]))
        assert len(stems) == 2
        subj, scan = path.split("/")[0], Path(path).name.replace("_events.tsv", "")
        names = [n for n in ds.stories_of(subj) if ds.info["audio"][n] in stems]
        assert sorted(ds.info["audio"][n] for n in names) == sorted(stems)
        assert all(ds.info["scans"][f"{subj}/{n}"] == [scan] for n in names)
    shame = _tiny(root, stories=["shame"], test_stories=["shame"])
    assert [shame.info["audio"][n] for n in shame.stories] == ["shame"] and shame.test_stories == list(shame.stories)


def test_slumlordreach_words_fall_in_its_two_story_segments(real_rows):
    root, picked = real_rows
    path = next(p for p in picked if "task-slumlordreach" in p)
    rows = picked[path]
    ds = _tiny(root, stories=["slumlordreach"])
    st = ds.stories["slumlordreach"]
    zero = float(rows[0]["onset"])  # 4.5: the music that opens the wav
    t = st.word_times + zero  # scan seconds
    segs = [(float(r["onset"]), float(r["onset"]) + float(r["duration"])) for r in rows if r["trial_type"] == "story"]
    assert segs == [(29.5, 932.5), (969.5, 1794.5)]
    inside = [(t >= a) & (t <= b) for a, b in segs]
    assert np.all(inside[0] | inside[1]) and inside[0].any() and inside[1].any()
    assert not np.any((t > 944.5) & (t < 966.5))  # none in the music between them
    k = ds.responses(path.split("/")[0], "slumlordreach")[:, 0]
    assert k[0] == 0 and k[-1] * TR >= 1794.5 - TR  # both segments and the music between: one story


def test_pieman_runs_are_repeats_of_one_story(real_rows):
    root, picked = real_rows
    ds = _tiny(root)
    subj = next(p.split("/")[0] for p in picked if "task-pieman_run-2" in p)
    rep = ds.repeats(subj, "pieman")
    assert rep.shape == (2, ds.stories["pieman"].n_trs, 6)
    np.testing.assert_array_equal(rep[0], rep[1])  # same TRs of both runs (same onsets)
    assert [k for k in ds._repeats] == [(subj, "pieman")]
    assert ds.stories["pieman"].tr_times[0] == 0.0  # the music at 0.0 s is the wav's start
    tunnel = ds.stories["tunnel"]
    assert tunnel.tr_times[0] == -3.0 and tunnel.onsets[0] == 0.5  # story first: zero at the story row


def test_check_reports_stories_scans_seconds_and_missing_transcripts(real_rows, tmp_path, capsys):
    import shutil

    root, picked = real_rows
    rep = narratives.check(root, space="tiny")
    assert rep["ok"] and rep["missing_transcripts"] == []
    path = next(p for p in picked if "task-schema" in p)
    subj = path.split("/")[0]
    items = [it for it in rep["stories"][subj] if it["scan"] == Path(path).name.replace("_events.tsv", "")]
    want = _expected(picked[path])
    assert [(it["audio"], it["zero"]) for it in items] == [(f"{s}_audio.wav", z) for s, z in want.items()]
    copy = tmp_path / "ds"
    shutil.copytree(root, copy)
    for stem in ("shame", "tunnel"):
        (copy / "stimuli" / "gentle" / stem / "align.json").unlink()
    rep = narratives.check(copy, space="tiny")
    assert not rep["ok"] and rep["missing_transcripts"] == ["shame", "tunnel"]
    with pytest.raises(DataNotFoundError, match=r"no transcript for stories \['shame', 'tunnel'\]"):
        _tiny(copy)
    assert main(["datasets", "check", "narratives", str(copy), "--space", "tiny", "--max-list", "100"]) == 1
    out = capsys.readouterr().out
    assert "transcripts missing: shame, tunnel" in out
    assert "pieman <- " in out and "pieman_audio.wav from 0 s (story rows at 15 s)" in out
    assert "presentation 2 of 2" in out


def test_stories_and_test_stories_name_wavs(real_rows):
    root, _ = real_rows
    with pytest.raises(ValidationError, match=r"stories \['milkyway'\] are played in none of the selected scans; "
                                              r"they play \['milkywayoriginal'"):
        _tiny(root, tasks=["milkyway"], stories=["milkyway"])  # the task is not a story
    ds = _tiny(root, stories=["pieman", "tunnel"], test_stories=["tunnel"])
    assert ds.train_stories == ["pieman"] and ds.test_stories == ["tunnel"]
    with pytest.raises(ValidationError, match=r"test_stories \['shame'\] are not among the loaded stories"):
        _tiny(root, stories=["pieman"], test_stories=["shame"])
