"""Bad inputs at the data boundary (issue 12): stale features, pickled responses,
wrong vertex counts, transcripts longer than their scans."""

import json
import logging
import os
import re
import time

import nibabel as nib
import numpy as np
import pytest

from brainalign import ValidationError
from brainalign.datasets import load
from brainalign.features import cache as cache_mod
from brainalign.features import extract
from brainalign.features import extraction as extract_mod
from brainalign.features.cache import path_fingerprint, tokenizer_key
from brainalign.features.testing import tiny_checkpoint, tiny_tokenizer
from brainalign.stimulus import FSAVERAGE_SIZES, Space, Story
from brainalign.surfaces.atlases import load_atlas

TEXT = (
    "so i was walking down the street one evening when i saw an old man sitting on a bench "
    "he looked at me and said you don't know what it's like to lose everything"
).split()
N5 = FSAVERAGE_SIZES["fsaverage5"]


def _story(words=TEXT, name="walk"):
    on = np.arange(len(words)) * 0.35
    return Story(name, list(words), on, on + 0.3, 2.0, np.arange(max(3, int(on[-1] // 2))) * 2.0 + 1.0)


def _count_loads(monkeypatch):
    calls = []
    real = extract_mod.load_model

    def counting(*a, **k):
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(extract_mod, "load_model", counting)
    return calls


def _replace_keeping_stat(path, data):
    """Overwrite ``path`` in place (same inode, as ``cp``) and put its mtime back (as ``cp -p``)."""
    st = os.stat(path)
    time.sleep(0.02)  # past the file system's timestamp granularity
    with open(path, "r+b") as f:
        f.write(data)
        f.truncate()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    after = os.stat(path)
    assert (after.st_size, after.st_mtime_ns, after.st_ino) == (st.st_size, st.st_mtime_ns, st.st_ino)


def _swap_two_vocab_ids(folder, tokenizer, words):
    """Edit ``tokenizer.json`` in place: two frequent tokens of ``words`` trade ids; the
    file keeps its size and mtime (only the digits move)."""
    f = folder / "tokenizer.json"
    text = f.read_text(encoding="utf-8")
    inv = {v: k for k, v in json.loads(text)["model"]["vocab"].items()}
    ids, counts = np.unique(tokenizer(" ".join(words))["input_ids"], return_counts=True)
    plain = [int(i) for i in ids[np.argsort(-counts)] if inv[int(i)].lstrip("\u0120").isalnum()]
    a = plain[0]
    b = next(i for i in plain[1:] if len(str(i)) == len(str(a)))

    def entry(i):
        return re.compile(re.escape(json.dumps(inv[i], ensure_ascii=False)) + r"(\s*:\s*)" + str(i) + r"\b")

    (ma,), (mb,) = list(entry(a).finditer(text)), list(entry(b).finditer(text))
    swapped = {ma.span(): ma.group(0)[: -len(str(a))] + str(b), mb.span(): mb.group(0)[: -len(str(b))] + str(a)}
    for (lo, hi), rep in sorted(swapped.items(), reverse=True):
        text = text[:lo] + rep + text[hi:]
    assert json.loads(text)["model"]["vocab"][inv[a]] == b
    _replace_keeping_stat(f, text.encode("utf-8"))


# -- 1. stale features -------------------------------------------------------------------
def test_weights_replaced_with_size_and_mtime_kept_are_recomputed(tmp_path, tok, monkeypatch):
    model = tiny_checkpoint(tmp_path / "m", "gpt2", seed=0, tokenizer=tok, n_layers=1, hidden=16)
    other = tiny_checkpoint(tmp_path / "other", "gpt2", seed=1, tokenizer=tok, n_layers=1, hidden=16)
    st, root = _story(), tmp_path / "fc"
    loads = _count_loads(monkeypatch)
    first = extract([st], model=model, context_tokens=16, cache=root)
    assert first.info["cache_hits"] == 0 and len(loads) == 1
    # (c) unchanged folder: served from the cache, the model is not loaded
    hit = extract([st], model=model, context_tokens=16, cache=root)
    assert hit.info["cache_hits"] == 1 and len(loads) == 1
    np.testing.assert_array_equal(hit.get("walk", 1), first.get("walk", 1))

    # (a) other weights of the same size, mtime put back (cp -p, rsync -a, tar x)
    w = model / "model.safetensors"
    original = w.read_bytes()
    new = (other / "model.safetensors").read_bytes()
    assert len(new) == len(original) and new != original
    _replace_keeping_stat(w, new)
    again = extract([st], model=model, context_tokens=16, cache=root)
    assert again.info["cache_hits"] == 0 and len(loads) == 2
    assert not np.allclose(again.get("walk", 1), first.get("walk", 1))
    fresh = extract([st], model=model, context_tokens=16, cache=False)
    np.testing.assert_array_equal(again.get("walk", 1), fresh.get("walk", 1))

    # weights over the hashing limit are keyed by stat fields only: ctime still tells
    monkeypatch.setattr(cache_mod, "HASH_MAX_BYTES", 0)
    extract([st], model=model, context_tokens=16, cache=root)
    n = len(loads)
    assert extract([st], model=model, context_tokens=16, cache=root).info["cache_hits"] == 1 and len(loads) == n
    _replace_keeping_stat(w, original)
    back = extract([st], model=model, context_tokens=16, cache=root)
    assert back.info["cache_hits"] == 0 and len(loads) == n + 1
    np.testing.assert_array_equal(back.get("walk", 1), first.get("walk", 1))


def test_edited_tokenizer_json_is_recomputed(tmp_path, tok, monkeypatch):
    model = tiny_checkpoint(tmp_path / "m", "gpt2", seed=0, tokenizer=tok, n_layers=1, hidden=16)
    st, root = _story(), tmp_path / "fc"
    loads = _count_loads(monkeypatch)
    first = extract([st], model=model, context_tokens=16, cache=root)
    assert extract([st], model=model, context_tokens=16, cache=root).info["cache_hits"] == 1
    # (b) the model folder's own tokenizer.json edited, mtime kept
    _swap_two_vocab_ids(model, tok, st.words)
    again = extract([st], model=model, context_tokens=16, cache=root)
    assert again.info["cache_hits"] == 0 and len(loads) == 2
    assert not np.allclose(again.get("walk", 1), first.get("walk", 1))
    np.testing.assert_array_equal(again.get("walk", 1), extract([st], model=model, context_tokens=16,
                                                                cache=False).get("walk", 1))


def test_tokenizer_given_by_path_is_keyed_by_its_content(tmp_path, tok, monkeypatch):
    model = tiny_checkpoint(tmp_path / "m", "gpt2", seed=0, tokenizer=tok, n_layers=1, hidden=16)
    tdir = tmp_path / "tok"
    tok.save_pretrained(tdir)
    st, root = _story(), tmp_path / "fc"
    loads = _count_loads(monkeypatch)
    first = extract([st], model=model, tokenizer=str(tdir), context_tokens=16, cache=root)
    assert extract([st], model=model, tokenizer=str(tdir), context_tokens=16, cache=root).info["cache_hits"] == 1
    assert len(loads) == 1
    _swap_two_vocab_ids(tdir, tok, st.words)
    again = extract([st], model=model, tokenizer=str(tdir), context_tokens=16, cache=root)
    assert again.info["cache_hits"] == 0 and len(loads) == 2
    assert not np.allclose(again.get("walk", 1), first.get("walk", 1))
    fresh = extract([st], model=model, tokenizer=str(tdir), context_tokens=16, cache=False)
    np.testing.assert_array_equal(again.get("walk", 1), fresh.get("walk", 1))


def test_trainer_checkpoint_covers_the_tokenizer_of_its_parent(tmp_path, tok):
    run = tmp_path / "run"
    ckpt = tiny_checkpoint(run / "checkpoint-10", "gpt2", tokenizer=tok, n_layers=1, hidden=16)
    tok.save_pretrained(run)
    for f in ckpt.iterdir():
        if f.name.startswith(("tokenizer", "special_tokens")):
            f.unlink()
    from brainalign.features.loading import resolve_source

    before = resolve_source(run, "checkpoint-10").commit
    assert resolve_source(run, "checkpoint-10").commit == before
    _swap_two_vocab_ids(run, tok, TEXT)
    assert resolve_source(run, "checkpoint-10").commit != before


def test_fingerprint_never_reads_big_weights(tmp_path, monkeypatch):
    folder = tmp_path / "big"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    big = folder / "model.safetensors"
    with open(big, "wb") as f:  # a sparse 2 GiB file: no disk used
        f.truncate(2 * 2**30)
    hashed = []
    real = cache_mod._content_hash
    monkeypatch.setattr(cache_mod, "_content_hash", lambda p, k: hashed.append(p.name) or real(p, k))
    key = path_fingerprint(folder)
    assert hashed == ["config.json"]
    assert path_fingerprint(folder) == key
    with open(big, "r+b") as f:  # a write that keeps size and mtime
        st = os.stat(big)
        time.sleep(0.02)
        f.write(b"x")
    os.utime(big, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path_fingerprint(folder) != key


def test_tokenizer_objects_are_keyed_by_their_state(tok, tmp_path):
    assert tokenizer_key(None) is None
    other = tiny_tokenizer(vocab_size=300)
    assert tokenizer_key(tok) == tokenizer_key(tok) != tokenizer_key(other)
    assert tokenizer_key("someorg/sometok") == "someorg/sometok"
    tok.save_pretrained(tmp_path / "t")
    a = tokenizer_key(str(tmp_path / "t"))
    _swap_two_vocab_ids(tmp_path / "t", tok, TEXT)
    assert tokenizer_key(str(tmp_path / "t")) != a


# -- 2-4. response and atlas files --------------------------------------------------------
MANIFEST = """\
name: mystudy
tr: 2.0
space: {space}
stories:
  storya: {{transcript: storya.csv}}
subjects:
  sub01:
    storya: {resp}
"""


def _manifest(tmp_path, resp, space="{targets: 6}", words=3, n_rows=12):
    rows = "".join(f"w{i},{0.5 * i},{0.5 * i + 0.4}\n" for i in range(words))
    (tmp_path / "storya.csv").write_text("word,onset,offset\n" + rows)
    (tmp_path / "m.yaml").write_text(MANIFEST.format(space=space, resp=resp))
    return tmp_path / "m.yaml"


def test_pickled_npy_responses_are_named(tmp_path):
    arr = np.empty(12, dtype=object)
    for i in range(12):
        arr[i] = np.zeros(6)
    np.save(tmp_path / "a.npy", arr, allow_pickle=True)
    with pytest.raises(ValidationError, match=r"a\.npy: holds Python objects.*never unpickles.*allow_pickle=False"):
        load("manifest", _manifest(tmp_path, "a.npy"))
    np.save(tmp_path / "a.npy", np.zeros((12, 6), dtype=np.float32), allow_pickle=False)
    assert load("manifest", _manifest(tmp_path, "a.npy")).responses("sub01", "storya").shape == (12, 6)


def _gifti_series(path, n_vertices, n_rows=12):
    data = np.random.default_rng(0).standard_normal((n_rows, n_vertices)).astype(np.float32)
    nib.save(nib.GiftiImage(darrays=[nib.gifti.GiftiDataArray(r) for r in data]), str(path))


def test_gifti_pair_with_the_split_in_the_wrong_place(tmp_path):
    _gifti_series(tmp_path / "a_L.func.gii", 10_000)
    _gifti_series(tmp_path / "a_R.func.gii", 10_484)
    m = _manifest(tmp_path, "[a_L.func.gii, a_R.func.gii]", space="fsaverage5")
    with pytest.raises(ValidationError, match=r"a_L\.func\.gii: the left hemisphere has 10000 vertices but space "
                                              r"fsaverage5 has 10242"):
        load("manifest", m)
    _gifti_series(tmp_path / "a_L.func.gii", N5)
    _gifti_series(tmp_path / "a_R.func.gii", N5)
    ds = load("manifest", m)
    assert ds.responses("sub01", "storya").shape == (12, 2 * N5)


def test_narratives_hemisphere_counts_must_match_the_named_surface(tmp_path):
    from brainalign.datasets import simulate
    from brainalign.datasets.simulated import word_embedding_features

    sim = simulate(n_subjects=1, stories=2, space=40, features=word_embedding_features(4), grid="narratives")
    sim.to_narratives(tmp_path)
    func = tmp_path / "derivatives" / "afni-smooth" / "sub-sim01" / "func"
    name = sim.space("sim01").name
    for f in func.glob("*.func.gii"):  # call the 20 + 20 vertex files fsaverage5
        f.rename(f.with_name(f.name.replace(name, "fsaverage5")))
    with pytest.raises(ValidationError, match=r"hemi-L_desc-sm6\.func\.gii: the left hemisphere has 20 vertices but "
                                              r"space fsaverage5 has 10242"):
        load("narratives", tmp_path, space="fsaverage5")


def _label_gifti(path, n):
    lab = (np.arange(n) % 3).astype(np.int32)
    img = nib.gifti.GiftiImage(darrays=[nib.gifti.GiftiDataArray(lab, intent="NIFTI_INTENT_LABEL")])
    for k, nm in ((0, "???"), (1, "roiA"), (2, "roiB")):
        gl = nib.gifti.GiftiLabel(key=k)
        gl.label = nm
        img.labeltable.labels.append(gl)
    nib.save(img, str(path))


def test_label_gifti_with_a_wrong_vertex_count_is_named(tmp_path):
    _label_gifti(tmp_path / "atlas_hemi-L.label.gii", 10_000)
    _label_gifti(tmp_path / "atlas_hemi-R.label.gii", 10_484)
    with pytest.raises(ValidationError, match=r"atlas_hemi-L\.label\.gii: has 10000 vertices, but fsaverage5 has "
                                              r"10242 per hemisphere"):
        load_atlas(tmp_path / "atlas_hemi-L.label.gii", "fsaverage5")
    _label_gifti(tmp_path / "atlas_hemi-L.label.gii", N5)
    with pytest.raises(ValidationError, match=r"atlas_hemi-R\.label\.gii: has 10484 vertices"):
        load_atlas(tmp_path / "atlas_hemi-L.label.gii", "fsaverage5")
    _label_gifti(tmp_path / "atlas_hemi-R.label.gii", N5)
    a = load_atlas(tmp_path / "atlas_hemi-L.label.gii", "fsaverage5")
    assert a.n_targets == 2 * N5 and a.space == "fsaverage5"


# -- 5. transcripts longer than their scans ----------------------------------------------------
def test_transcript_twice_as_long_as_its_responses(tmp_path):
    # 40 words over 20 s, 12 rows of 2 s: fine; then 80 words over 40 s on the same rows
    np.save(tmp_path / "a.npy", np.zeros((12, 6), dtype=np.float32))
    assert load("manifest", _manifest(tmp_path, "a.npy", words=40)).stories["storya"].n_words == 40
    with pytest.raises(ValidationError, match=r"story 'storya' \(.*storya\.csv\): 24 of its 80 words \(30%\) come after "
                                              r"the scan: the transcript ends at 39\.7 s but the last of its 12 TRs is "
                                              r"at 22\.0 s"):
        load("manifest", _manifest(tmp_path, "a.npy", words=80))


def test_a_few_words_after_the_scan_are_a_warning(tmp_path, caplog):
    # 58 words over 29 s on rows up to 22 s: the 2 words after 28 s reach no TR
    np.save(tmp_path / "a.npy", np.zeros((12, 6), dtype=np.float32))
    with caplog.at_level(logging.WARNING, logger="brainalign.timing"):
        ds = load("manifest", _manifest(tmp_path, "a.npy", words=58))
    assert ds.stories["storya"].n_words == 58
    assert "words after the end of the scan reach no TR" in caplog.text and "2 of 'storya'" in caplog.text


def test_space_check_hemispheres_directly():
    sp = Space.fsaverage("fsaverage5")
    sp.check_hemispheres((N5, N5), ("l.gii", "r.gii"))
    with pytest.raises(ValidationError, match=r"r\.gii: the right hemisphere has 10484"):
        sp.check_hemispheres((N5, 10_484), ("l.gii", "r.gii"))


def test_design_refuses_stories_whose_words_reach_no_tr():
    from brainalign.features import design

    on = np.arange(80) * 0.5
    st = Story("long", [f"w{i}" for i in range(80)], on, on + 0.4, 2.0, np.arange(12) * 2.0)
    with pytest.raises(ValidationError, match=r"story 'long': 24 of its 80 words"):
        design(lambda name: np.ones((80, 2)), [st])
    short = st.replace(words=st.words[:40], onsets=on[:40], offsets=on[:40] + 0.4)
    assert design(lambda name: np.ones((40, 2)), [short]).shape == (12, 8)
