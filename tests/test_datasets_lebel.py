import json
import os
import tracemalloc
from pathlib import Path

import h5py
import numpy as np
import pytest

from brainalign import DataNotFoundError, NotDownloadedError, ValidationError
from brainalign.cli import main
from brainalign.datasets import lebel2023, load, simulate
from brainalign.datasets.simulated import word_embedding_features

#: the real derivative file names of ds003020 (a copy of the listing in shared/reference)
REF = Path(__file__).parents[1] / "datasets" / "ds003020-derivative-files.txt"


def _listing() -> list[str]:
    return [line.strip() for line in REF.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def sim():
    return simulate(n_subjects=2, stories=3, space=60, features=word_embedding_features(4))


def test_round_trip_lebel_layout(sim, tmp_path):
    sim.to_lebel(tmp_path)
    back = load("lebel2023", tmp_path, test_stories=sim.test_stories)
    assert back.subjects == sim.subjects
    assert set(back.stories) == set(sim.stories)
    assert back.test_stories == sim.test_stories
    for name, st in sim.stories.items():
        assert back.stories[name] == st  # name, words, onsets, offsets, TR and TR times, exactly
        for subj in sim.subjects:
            np.testing.assert_array_equal(back.responses(subj, name), sim.responses(subj, name))
    assert not list(tmp_path.rglob("*.tmp"))


def _annex_tree(root: Path) -> list[str]:
    """Every file of the real listing as a git-annex symlink whose object is missing."""
    files = _listing()
    (root / ".git" / "annex" / "objects").mkdir(parents=True)
    for rel in files:
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        depth = len(Path(rel).parts) - 1
        os.symlink("../" * depth + f".git/annex/objects/Xx/Yy/MD5E-s1--{abs(hash(rel))}/{p.name}", p)
    return files


def _fill_subject(root: Path, subject: str, files: list[str], n_vox: int = 7) -> dict[str, int]:
    """Replace one subject's pointers (and TextGrids, respdict) by real-format files."""
    rng = np.random.default_rng(0)
    stories = sorted(Path(f).stem for f in files if f"preprocessed_data/{subject}/" in f)
    respdict = {s: 30 + i % 5 for i, s in enumerate(stories)}
    rp = root / "derivative" / "respdict.json"
    rp.unlink()
    rp.write_text(json.dumps(respdict))
    for i, s in enumerate(stories):
        tg = root / "derivative" / "TextGrids" / f"{s}.TextGrid"
        tg.unlink()
        tg.write_text(_textgrid(["so", "it", "began", str(i)]))
        h = root / "derivative" / "preprocessed_data" / subject / f"{s}.hf5"
        h.unlink()
        with h5py.File(h, "w") as f:
            f.create_dataset("data", data=rng.standard_normal((respdict[s] - 20, n_vox)).astype(np.float32))
    return respdict


def _textgrid(words, step=0.6):
    xmax = step * (len(words) + 2)
    ints = [(0.0, step, "sp")] + [(step * (i + 1), step * (i + 2), w) for i, w in enumerate(words)] + [
        (step * (len(words) + 1), xmax, "{BR}")
    ]
    body = "".join(
        f'        intervals [{k + 1}]:\n            xmin = {a}\n            xmax = {b}\n            text = "{t}"\n'
        for k, (a, b, t) in enumerate(ints)
    )

    def tier(name):
        return (
            f'    item [{1 if name == "phone" else 2}]:\n        class = "IntervalTier"\n        name = "{name}"\n'
            f"        xmin = 0\n        xmax = {xmax}\n        intervals: size = {len(ints)}\n" + body
        )

    return (
        'File type = "ooTextFile"\nObject class = "TextGrid"\n\nxmin = 0\n'
        f"xmax = {xmax}\ntiers? <exists>\nsize = 2\nitem []:\n" + tier("phone") + tier("word")
    )


def test_check_reports_annex_pointers_and_command(tmp_path, capsys):
    files = _annex_tree(tmp_path)
    rep = lebel2023.check(tmp_path)
    assert not rep["ok"]
    n_hf5 = sum(f.endswith(".hf5") and "preprocessed_data" in f for f in files)
    assert len(rep["not_downloaded"]) == n_hf5 + 84 + 1
    assert "datalad get" in rep["command"]
    code = main(["datasets", "check", "lebel2023", str(tmp_path)])
    out = capsys.readouterr().out
    assert code != 0
    assert "not downloaded" in out and "datalad get" in out
    pointers = rep["not_downloaded"]
    assert f"not downloaded (git-annex pointers): {len(pointers)} files" in out
    assert all(f"\n    {p}\n" in out for p in pointers[:20])  # the first --max-list (20) of them
    assert f"\n    ... and {len(pointers) - 20} more\n" in out and f"\n    {pointers[20]}\n" not in out
    assert "derivative/preprocessed_data/UTS01/wheretheressmoke.hf5" in pointers
    assert main(["datasets", "check", "lebel2023", str(tmp_path), "--max-list", str(len(pointers))]) != 0
    out = capsys.readouterr().out
    assert "\n    derivative/preprocessed_data/UTS01/wheretheressmoke.hf5\n" in out  # all listed when asked
    assert all(f"\n    {p}\n" in out for p in pointers) and "more\n" not in out
    with pytest.raises(NotDownloadedError, match="datalad get"):
        load("lebel2023", tmp_path, subjects=["UTS02"])


def test_one_subject_downloaded_finds_84_stories(tmp_path, capsys):
    files = _annex_tree(tmp_path)
    respdict = _fill_subject(tmp_path, "UTS01", files)
    ds = load("lebel2023", tmp_path, subjects=["UTS01"])
    assert len(ds.stories) == 84 and len(ds.stories_of("UTS01")) == 84
    assert ds.test_stories == ["wheretheressmoke"] and len(ds.train_stories) == 83
    st = ds.stories["wheretheressmoke"]
    assert st.n_trs == respdict["wheretheressmoke"] - 20
    assert st.tr_times[0] == 11.0 and st.words == ("so", "it", "began", str(sorted(respdict).index("wheretheressmoke")))
    assert ds.responses("UTS01", "wheretheressmoke").shape == (st.n_trs, 7)
    assert lebel2023.check(tmp_path, subjects=["UTS01"])["ok"]
    assert main(["datasets", "check", "lebel2023", str(tmp_path), "--subjects", "UTS01"]) == 0
    # the subjects of sess_to_story.json's split exist: 26, 27, 54 story subjects too
    counts = {s: sum(f"preprocessed_data/{s}/" in f for f in files) for s in ("UTS04", "UTS05", "UTS09")}
    assert counts == {"UTS04": 26, "UTS05": 27, "UTS09": 54}


@pytest.mark.parametrize("subject", ["UTS04", "UTS05", "UTS09"])
def test_subjects_with_fewer_stories(tmp_path, subject):
    files = _annex_tree(tmp_path)
    _fill_subject(tmp_path, "UTS01", files)  # all 84 TextGrids + respdict
    want = sorted(Path(f).stem for f in files if f"preprocessed_data/{subject}/" in f)
    for s in want:
        h = tmp_path / "derivative" / "preprocessed_data" / subject / f"{s}.hf5"
        h.unlink()
        n = json.loads((tmp_path / "derivative" / "respdict.json").read_text())[s] - 20
        with h5py.File(h, "w") as f:
            f.create_dataset("data", data=np.ones((n, 3), np.float32))
    ds = load("lebel2023", tmp_path, subjects=[subject])
    assert ds.stories_of(subject) == want


def test_metadata_load_reads_no_response_arrays(tmp_path, monkeypatch):
    files = _annex_tree(tmp_path)
    _fill_subject(tmp_path, "UTS01", files, n_vox=4000)  # 84 x ~12 x 4000 float32 ~ 16 MB in all
    calls = []
    real = lebel2023._read_hf5
    monkeypatch.setattr(lebel2023, "_read_hf5", lambda p: calls.append(p) or real(p))
    tracemalloc.start()
    ds = load("lebel2023", tmp_path, subjects=["UTS01"])
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert calls == []
    assert peak < 4_000_000
    ds.responses("UTS01", "wheretheressmoke")
    assert len(calls) == 1


@pytest.fixture
def written(sim, tmp_path):
    sim.to_lebel(tmp_path)
    return tmp_path


def test_mismatched_tr_count_is_named(written):
    rp = written / "derivative" / "respdict.json"
    rd = json.loads(rp.read_text())
    rd["theflood"] += 1
    rp.write_text(json.dumps(rd))
    with pytest.raises(ValidationError, match=r"theflood\.hf5: has \d+ TRs but respdict"):
        load("lebel2023", written)


def test_missing_textgrid_is_named(written):
    (written / "derivative" / "TextGrids" / "theflood.TextGrid").unlink()
    with pytest.raises(DataNotFoundError, match=r"theflood\.TextGrid does not exist"):
        load("lebel2023", written)


def test_nan_responses_are_named(written):
    p = written / "derivative" / "preprocessed_data" / "sim01" / "theflood.hf5"
    with h5py.File(p, "r+") as f:
        f["data"][3, 2] = np.nan
    ds = load("lebel2023", written)
    with pytest.raises(ValidationError, match=r"theflood\.hf5: responses contain 1 non-finite"):
        ds.responses("sim01", "theflood")


def test_target_counts_differing_across_stories_are_named(written):
    p = written / "derivative" / "preprocessed_data" / "sim02" / "thegreenbicycle.hf5"
    with h5py.File(p, "r+") as f:
        data = f["data"][...]
        del f["data"]
        f.create_dataset("data", data=data[:, :-1])
    with pytest.raises(ValidationError, match=r"thegreenbicycle\.hf5: has 59 voxels"):
        load("lebel2023", written)
    ds = load("lebel2023", written, check_shapes=False)
    with h5py.File(written / "derivative" / "preprocessed_data" / "sim02" / "theflood.hf5", "r") as f:
        np.testing.assert_array_equal(ds.responses("sim02", "theflood"), f["data"][...])  # other stories still read
    with pytest.raises(ValidationError, match=r"thegreenbicycle\.hf5: has 59 targets"):
        ds.responses("sim02", "thegreenbicycle")


def test_not_a_dataset_folder(tmp_path):
    with pytest.raises(DataNotFoundError, match="datalad install"):
        load("lebel2023", tmp_path)
    with pytest.raises(ValidationError, match="root"):
        load("lebel2023", None)


def test_datasets_list(capsys):
    assert main(["datasets", "list"]) == 0
    out = capsys.readouterr().out
    for name in ("lebel2023", "narratives", "manifest", "simulated"):
        assert name in out
