"""The results store never loses, mixes or silently misreads work (issue 12).

Store-level cases: foreign folders, the writer lock, done markers, extension, damage,
OS errors. End-to-end kills and concurrent runs are in ``test_sweep_safety.py``.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest
import xarray as xr

from brainalign.sweep.store import (DamagedStoreError, IncompatibleStoreError, ResultsStore, StoreLockedError,
                                    StoreWriteError)
from brainalign import ValidationError


def _skeleton(labels=("a", "b", "c")):
    n = len(labels)
    coords = {
        "checkpoint": np.array(labels),
        "tokens": ("checkpoint", 10.0 ** np.arange(n)),
        "layer": np.array([0, 1]),
        "target": np.arange(4),
    }
    variables = {"score": (("checkpoint", "layer", "target"), "float32"), "lm_loss": (("checkpoint",), "float32"),
                 "significant": (("checkpoint", "layer", "target"), "bool")}
    return coords, variables


def _create(store, labels=("a", "b", "c"), attrs=None, **kw):
    coords, variables = _skeleton(labels)
    attrs = attrs or {"config": {"x": 1}, "dataset": "sim", "created": "t0"}
    return store.create(coords, variables, attrs=attrs, layout_key={"hash": "h1"}, **kw)


def _region(value, lm_loss=np.nan):
    return xr.Dataset({
        "score": (("layer", "target"), np.full((2, 4), value, "float32")),
        "lm_loss": ((), np.float32(lm_loss)),
        "significant": (("layer", "target"), np.ones((2, 4), bool)),
    })


# -- 1. a folder that is not a store is never deleted -------------------------------
@pytest.mark.parametrize("force", [False, True])
def test_foreign_folder_is_refused_and_kept(tmp_path, force):
    folder = tmp_path / "results.zarr"
    folder.mkdir()
    (folder / "thesis.tex").write_text("two years of work")
    with pytest.raises(ValidationError, match=r"results.zarr exists and is not a brainalign results store.*never deletes"):
        _create(ResultsStore(folder), force=force)
    assert (folder / "thesis.tex").read_text() == "two years of work"


def test_file_is_refused_and_empty_folder_used(tmp_path):
    (tmp_path / "f.zarr").write_text("x")
    with pytest.raises(ValidationError, match="is a file, not a results store"):
        _create(ResultsStore(tmp_path / "f.zarr"), force=True)
    assert (tmp_path / "f.zarr").read_text() == "x"
    (tmp_path / "empty.zarr").mkdir()
    assert _create(ResultsStore(tmp_path / "empty.zarr")) is True


def test_force_recreates_only_a_brainalign_store(tmp_path):
    store = ResultsStore(tmp_path / "r.zarr")
    _create(store)
    store.write_region("a", _region(1.0), "h1")
    assert _create(store, force=True) is True
    assert not store.done("a") and np.isnan(store.load().score.values).all()
    # no temporary folder is left beside it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.zarr"]


# -- 2. one writer ------------------------------------------------------------------
_HOLD = textwrap.dedent("""
    import os, signal, sys, time
    from brainalign.sweep.store import ResultsStore
    with ResultsStore(sys.argv[1]).writer():
        print("held", flush=True)
        if sys.argv[2] == "die":
            os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(60)
""")


def _holder(path, how):
    proc = subprocess.Popen([sys.executable, "-c", _HOLD, str(path), how], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_second_writer_is_refused_at_once_with_the_owner(tmp_path):
    store = ResultsStore(tmp_path / "r.zarr")
    proc = _holder(store.path, "hold")
    try:
        with pytest.raises(StoreLockedError, match=rf"store .*r.zarr is being written by PID {proc.pid} on \S+ since 20"):
            with store.writer():
                pass
    finally:
        proc.kill()
        proc.wait()


def test_lock_of_a_dead_writer_is_taken_over_with_a_warning(tmp_path):
    store = ResultsStore(tmp_path / "r.zarr")
    proc = _holder(store.path, "die")
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    with pytest.warns(UserWarning, match=rf"taking over the lock left by PID {proc.pid}"):
        with store.writer():
            _create(store)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # released cleanly: no warning the next time
        with store.writer():
            pass


# -- 3. done markers ------------------------------------------------------------------
@pytest.mark.parametrize("content", [b"", b"{\"label\": \"b\", \"ha", b"\xff\xfe garbage", b"[1, 2]"])
def test_empty_or_corrupt_marker_counts_as_not_done(tmp_path, content):
    store = ResultsStore(tmp_path / "r.zarr")
    _create(store)
    store.write_region("a", _region(1.0), "h1")
    store.write_region("b", _region(2.0), "h1")
    (store.path / ".brainalign/done/b.json").write_bytes(content)
    (store.path / ".brainalign/done/.a.k1l2m3.json").write_bytes(b"")  # a temp marker of a killed write
    with pytest.warns(UserWarning, match="done marker b.json is empty or corrupt; that region counts as not done"):
        assert not store.done("b", "h1")
    with pytest.warns(UserWarning):
        assert list(store.done_info()) == ["a"]
        assert store.load().done.values.tolist() == [True, False, False]
    with pytest.warns(UserWarning), store.writer():  # the writer cleans what was left
        pass
    assert sorted(p.name for p in (store.path / ".brainalign/done").iterdir()) == ["a.json"]


# -- 4. extending keeps the store's attributes and values ------------------------------
def test_extending_keeps_attributes_values_and_training_order(tmp_path):
    store = ResultsStore(tmp_path / "r.zarr")
    attrs = {f"attr{i}": i for i in range(11)} | {"config": {"revisions": ["a", "b"]}, "created": "t0"}
    _create(store, labels=("a", "b"), attrs=attrs)
    store.write_region("a", _region(1.0, 3.0), "h1")
    store.write_region("b", _region(2.0, 2.0), "h1")
    store.set_attrs(completed="t1")
    before = store.load()
    new_attrs = attrs | {"config": {"revisions": ["a", "b", "c"]}, "created": "t9"}
    assert _create(store, labels=("a", "b", "c"), attrs=new_attrs) is False
    after = store.load()
    assert set(after.attrs) == set(before.attrs)  # 13 attributes, none lost
    assert after.attrs["config"] == {"revisions": ["a", "b", "c"]}  # the config of the run that extended it
    assert after.attrs["created"] == "t0"  # when the store was made
    assert list(after.checkpoint.values) == ["a", "b", "c"]
    np.testing.assert_array_equal(after.tokens.values, [1.0, 10.0, 100.0])
    xr.testing.assert_identical(after.drop_vars("done").sel(checkpoint=["a", "b"]).drop_attrs(),
                                before.drop_vars("done").drop_attrs())
    assert np.isnan(after.score.sel(checkpoint="c").values).all() and not after.significant.sel(checkpoint="c").any()
    store.write_region("c", _region(3.0), "h1")
    assert store.load().done.values.all()


def test_interrupted_extension_is_rolled_back_by_the_next_writer(tmp_path):
    store = ResultsStore(tmp_path / "r.zarr")
    _create(store, labels=("a", "b"))
    store.write_region("a", _region(1.0), "h1")
    before = store.load()
    # as if killed half-way through adding "c": the journal is written, some arrays resized
    (store.path / ".brainalign/extending.json").write_text(json.dumps({"n": 2}))
    import zarr

    zarr.open_array(str(store.path / "score"), mode="r+", zarr_format=2).resize((3, 2, 4))
    with pytest.raises(DamagedStoreError, match="having new regions added by a running `brainalign run`, or was interrupted while they were; in that case run"):
        store.load()
    with pytest.warns(UserWarning, match="rolled back an extension"), store.writer():
        pass
    xr.testing.assert_identical(store.load(), before)
    _create(store, labels=("a", "b", "c"))
    assert store.load().sizes["checkpoint"] == 3


def test_labels_too_long_for_the_store_are_refused(tmp_path):
    store = ResultsStore(tmp_path / "r.zarr")
    _create(store, labels=("a", "b"))
    with pytest.raises(ValidationError, match="longer than the 64 characters"):
        _create(store, labels=("a", "b", "x" * 65))
    assert store.load().sizes["checkpoint"] == 2


# -- damage is named --------------------------------------------------------------------
def _done_store(tmp_path):
    store = ResultsStore(tmp_path / "r.zarr")
    _create(store)
    for i, label in enumerate("abc"):
        store.write_region(label, _region(float(i)), "h1")
    return store


def test_plain_folder_is_not_a_store(tmp_path):
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "x.txt").write_text("x")
    with pytest.raises(ValidationError, match=r"plain is not a brainalign results store \(it has no .brainalign/layout.json\)"):
        ResultsStore(tmp_path / "plain").load()
    with pytest.raises(ValidationError, match="does not exist"):
        ResultsStore(tmp_path / "nowhere.zarr").load()


def test_truncated_metadata_is_named(tmp_path):
    store = _done_store(tmp_path)
    zattrs = store.path / "score" / ".zattrs"
    zattrs.write_text(zattrs.read_text()[:7])
    with pytest.raises(DamagedStoreError, match=r"r.zarr: score/.zattrs is not valid JSON"):
        store.load()


def test_corrupt_chunk_is_named_with_its_checkpoint(tmp_path):
    store = _done_store(tmp_path)
    (store.path / "score" / "1.0.0").write_bytes(b"\x02\x01garbage-not-blosc" * 3)
    with pytest.raises(DamagedStoreError, match=r"variable 'score' cannot be read .*chunk of checkpoint 'b' is damaged: remove r.zarr/.brainalign/done/b.json"):
        store.load()


def test_deleted_chunk_of_a_done_region_is_found(tmp_path):
    store = _done_store(tmp_path)
    (store.path / "score" / "2.0.0").unlink()
    assert store.missing_chunks() == {"c": ["score/2.0.0"]}
    with pytest.raises(DamagedStoreError, match=r"chunk file\(s\) score/2.0.0 of done checkpoint 'c' are missing"):
        store.load()
    # all-NaN regions are written too, so a NaN lm_loss is not taken for a missing chunk
    assert "lm_loss" not in str(store.missing_chunks())


# -- 9. OS errors ---------------------------------------------------------------------
def _mount_tmpfs(where, opts):
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    where.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(where)], capture_output=True)
    if r.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.decode().strip()}")


def _umount(where):
    subprocess.run(["umount", "-l", str(where)], check=False)


def test_read_only_folder_is_found_before_work(tmp_path):
    ro = tmp_path / "ro"
    _mount_tmpfs(ro, "ro,size=1m")
    try:
        store = ResultsStore(ro / "results.zarr")
        with pytest.raises(StoreWriteError, match=r"cannot write the results store's folder .*ro: the filesystem is read-only .*EROFS"):
            with store.writer():
                pass
    finally:
        _umount(ro)


def test_disk_full_is_named_and_leaves_the_region_not_done(tmp_path):
    small = tmp_path / "small"
    _mount_tmpfs(small, "size=400k")
    try:
        store = ResultsStore(small / "r.zarr")
        coords, variables = _skeleton()
        coords["target"] = np.arange(100_000)
        with store.writer():
            store.create(coords, variables, layout_key={"hash": "h1"})
            big = xr.Dataset({"score": (("layer", "target"), np.random.default_rng(0).random((2, 100_000), dtype="float32"))})
            with pytest.raises(StoreWriteError, match=r"cannot write results store .*r.zarr: the disk is full .*ENOSPC.*checkpoint 'a' is not marked done"):
                store.write_region("a", big, "h1")
        assert not store.done("a")
    finally:
        _umount(small)


def test_cli_names_the_path_of_an_os_error(tmp_path, capsys):
    from brainalign.cli import main

    ro = tmp_path / "ro"
    _mount_tmpfs(ro, "ro,size=1m")
    try:
        cfg = tmp_path / "run.yaml"
        cfg.write_text(f"dataset: {{name: simulated}}\nmodel: {{name: gpt2}}\noutput: {{store: {ro / 'results.zarr'}}}\n")
        assert main(["run", str(cfg), "--no-report"]) == 2
        err = capsys.readouterr().err
        assert "brainalign: error: cannot write the results store's folder" in err and "read-only" in err
        assert "Traceback" not in err
    finally:
        _umount(ro)


# -- what a cold review found -------------------------------------------------------------
def test_writer_cleans_only_its_own_temporary_folders(tmp_path):
    store = ResultsStore(tmp_path / "r.zarr")
    mine = tmp_path / ".r.zarr.notes"
    other = tmp_path / ".r.zarr.bak.brainalign-new-0123456789abcdef0123456789abcdef"  # another store's
    ours = tmp_path / f".r.zarr.brainalign-new-{'ab' * 16}"  # ours, left by a killed creation
    for p in (mine, other, ours):
        p.mkdir()
        (p / "f").write_text("x")
    with store.writer():
        _create(store)
    assert mine.is_dir() and other.is_dir() and not ours.exists()


def test_one_lock_whatever_path_names_the_store(tmp_path):
    store = ResultsStore(tmp_path / "r.zarr")
    with store.writer():
        _create(store)
    (tmp_path / "link.zarr").symlink_to(tmp_path / "r.zarr")
    proc = _holder(store.path, "hold")
    try:
        with pytest.raises(StoreLockedError, match=f"PID {proc.pid}"):
            with ResultsStore(tmp_path / "link.zarr").writer():
                pass
        assert ResultsStore(tmp_path / "link.zarr").locked_by().startswith(f"PID {proc.pid} on ")
    finally:
        proc.kill()
        proc.wait()
    assert store.locked_by() is None


def test_a_store_of_python_objects_is_refused_unread(tmp_path):
    store = _done_store(tmp_path)
    meta = json.loads((store.path / "score" / ".zarray").read_text())
    meta.update(dtype="|O", filters=[{"id": "pickle", "protocol": 4}])
    (store.path / "score" / ".zarray").write_text(json.dumps(meta))
    with pytest.raises(DamagedStoreError, match=r"score holds Python objects .*never unpickles"):
        store.load()


def test_zarr_temp_files_of_a_killed_writer_do_not_make_a_store_unreadable(tmp_path):
    store = _done_store(tmp_path)
    (store.path / f".zattrs.{'0' * 32}.partial").write_text('{"trunc')
    (store.path / "score" / f"1.0.0.{'1' * 32}.partial").write_bytes(b"half a chunk")
    assert store.load().done.values.all()


def test_regions_marked_by_older_versions_are_not_taken_for_damaged(tmp_path):
    # brainalign before issue 12 skipped chunks equal to the fill value (an all-NaN
    # lm_loss) and wrote no ``all_chunks`` in its markers
    store = _done_store(tmp_path)
    for p in (store.path / ".brainalign/done").glob("*.json"):
        info = json.loads(p.read_text())
        del info["all_chunks"]
        p.write_text(json.dumps(info))
    (store.path / "lm_loss" / "0").unlink()
    assert store.missing_chunks() == {}
    assert np.isnan(store.load().lm_loss.values[0])


def test_rehash_rekeys_layout_and_markers(tmp_path):
    store = _done_store(tmp_path)
    store.rehash("h1", "h2")
    assert store.layout()["hash"] == "h2" and store.done("a", "h2") and store.done("c", "h2")
    with pytest.raises(IncompatibleStoreError):
        store.done("b", "h1")
