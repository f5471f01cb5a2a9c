import os
import stat

import numpy as np
import pytest

from brainalign._io import atomic_path, atomic_save_npy, atomic_write_json


def test_failed_write_leaves_nothing(tmp_path):
    target = tmp_path / "sub" / "out.png"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            assert tmp.suffix == ".png" and tmp.parent == target.parent
            tmp.write_bytes(b"half")
            raise RuntimeError("crash mid-write")
    assert not target.exists() and list(target.parent.iterdir()) == []


def test_success_replaces_with_plain_permissions(tmp_path):
    target = tmp_path / "a.json"
    target.write_text("old")
    atomic_write_json(target, {"x": 1})
    assert target.read_text() == '{\n  "x": 1\n}'
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask
    atomic_save_npy(tmp_path / "a.npy", np.arange(3))
    assert np.load(tmp_path / "a.npy", allow_pickle=False).tolist() == [0, 1, 2]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "a.npy"]


def test_directory_is_replaced_whole(tmp_path):
    target = tmp_path / "checkpoint-10"
    target.mkdir()
    (target / "stale.bin").write_text("x")
    with atomic_path(target, directory=True) as tmp:
        (tmp / "config.json").write_text("{}")
    assert sorted(p.name for p in target.iterdir()) == ["config.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-10"]
    with pytest.raises(ValueError):
        with atomic_path(target, directory=True) as tmp:
            (tmp / "half").write_text("x")
            raise ValueError
    assert sorted(p.name for p in target.iterdir()) == ["config.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-10"]
