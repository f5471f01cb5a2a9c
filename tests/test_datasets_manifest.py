import h5py
import nibabel as nib
import numpy as np
import pytest

from brainalign import DataNotFoundError, ValidationError
from brainalign.cli import main
from brainalign.datasets import load

MANIFEST = """\
name: mystudy
tr: 2.0
onset: 4.0
tr_reference: middle
space: {space}
stories:
  storya:
    transcript: storya.csv
  storyb:
    transcript: storyb.TextGrid
    onset: 2.0
subjects:
  sub01:
    storya: {a}
    storyb: {b}
test: [storyb]
"""

TG = '''File type = "ooTextFile"
Object class = "TextGrid"

xmin = 0
xmax = 3
tiers? <exists>
size = 1
item []:
    item [1]:
        class = "IntervalTier"
        name = "words"
        xmin = 0
        xmax = 3
        intervals: size = 3
        intervals [1]:
            xmin = 0
            xmax = 1
            text = "once"
        intervals [2]:
            xmin = 1
            xmax = 2
            text = "{SP}"
        intervals [3]:
            xmin = 2
            xmax = 3
            text = "upon"
'''


def _setup(tmp_path, fmt="npy", manifest=None, space="{targets: 6}"):
    rng = np.random.default_rng(0)
    (tmp_path / "storya.csv").write_text("word,onset,offset\nhello,0.5,0.9\nthere,1.0,1.4\nfriend,1.5,2.2\n")
    (tmp_path / "storyb.TextGrid").write_text(TG)
    a, b = rng.standard_normal((12, 6)).astype(np.float32), rng.standard_normal((9, 6)).astype(np.float32)
    if fmt == "npy":
        np.save(tmp_path / "a.npy", a)
        np.save(tmp_path / "b.npy", b)
        specs = ("a.npy", "b.npy")
    elif fmt == "hf5":
        for n, x in (("a", a), ("b", b)):
            with h5py.File(tmp_path / f"{n}.hf5", "w") as f:
                f.create_dataset("data", data=x)
        specs = ("a.hf5", "b.hf5")
    elif fmt == "gii":
        for n, x in (("a", a), ("b", b)):
            for h, blk in (("L", x[:, :3]), ("R", x[:, 3:])):
                img = nib.GiftiImage(darrays=[nib.gifti.GiftiDataArray(r) for r in np.ascontiguousarray(blk)])
                nib.save(img, str(tmp_path / f"{n}_{h}.func.gii"))
        specs = ("[a_L.func.gii, a_R.func.gii]", "[b_L.func.gii, b_R.func.gii]")
    else:  # nifti with a mask of 6 voxels
        mask = np.zeros((3, 3, 2), dtype=np.uint8)
        idx = [(0, 0, 0), (1, 0, 0), (2, 1, 0), (0, 2, 1), (1, 1, 1), (2, 2, 1)]
        for i in idx:
            mask[i] = 1
        nib.save(nib.Nifti1Image(mask, np.eye(4)), str(tmp_path / "mask.nii.gz"))
        for n, x in (("a", a), ("b", b)):
            vol = np.zeros((3, 3, 2, x.shape[0]), dtype=np.float32)
            vol[mask.astype(bool)] = x.T
            nib.save(nib.Nifti1Image(vol, np.eye(4)), str(tmp_path / f"{n}.nii.gz"))
        specs = ("a.nii.gz", "b.nii.gz")
        space = "{volume: mask.nii.gz}"
    text = (manifest or MANIFEST).format(space=space, a=specs[0], b=specs[1])
    p = tmp_path / "study.yaml"
    p.write_text(text)
    return p, a, b


@pytest.mark.parametrize("fmt", ["npy", "hf5", "gii", "nii"])
def test_manifest_formats(tmp_path, fmt):
    p, a, b = _setup(tmp_path, fmt)
    ds = load("manifest", p)
    assert ds.name == "mystudy" and ds.subjects == ["sub01"]
    assert ds.test_stories == ["storyb"] and ds.train_stories == ["storya"]
    sa, sb = ds.stories["storya"], ds.stories["storyb"]
    assert sa.words == ("hello", "there", "friend") and sb.words == ("once", "upon")
    np.testing.assert_allclose(sa.tr_times[:2], [-3.0, -1.0])  # k*2 - 4 + 1
    np.testing.assert_allclose(sb.tr_times[:2], [-1.0, 1.0])  # own onset 2.0
    np.testing.assert_array_equal(ds.responses("sub01", "storya"), a)
    np.testing.assert_array_equal(ds.responses("sub01", "storyb"), b)
    assert ds.space("sub01").n_targets == 6


def test_wrong_key_is_reported_with_line(tmp_path):
    p, _, _ = _setup(tmp_path, manifest=MANIFEST.replace("    transcript: storyb.TextGrid", "    transcrpt: storyb.TextGrid"))
    with pytest.raises(ValidationError) as exc:
        load("manifest", p)
    msg = str(exc.value)
    assert "study.yaml, line 10: stories.storyb.transcrpt: unknown key" in msg
    assert "stories.storyb.transcript: Field required" in msg
    assert main(["datasets", "check", "manifest", str(p)]) == 1


def test_bad_values_are_reported_with_line(tmp_path):
    p, _, _ = _setup(tmp_path, manifest=MANIFEST.replace("tr: 2.0", "tr: -1").replace("{space}", "fsaverage9"))
    with pytest.raises(ValidationError) as exc:
        load("manifest", p)
    assert "line 2: tr:" in str(exc.value) and "line 5: space" in str(exc.value)


def test_manifest_file_errors(tmp_path):
    p, _, _ = _setup(tmp_path)
    (tmp_path / "b.npy").unlink()
    with pytest.raises(DataNotFoundError, match=r"b\.npy does not exist"):
        load("manifest", p)
    p, _, _ = _setup(tmp_path, manifest=MANIFEST.replace("test: [storyb]", "test: [storyc]"))
    with pytest.raises(ValidationError, match=r"line 16: test names stories \['storyc'\]"):
        load("manifest", p)
    p.write_text("tr: [1\n")
    with pytest.raises(ValidationError, match=r"study\.yaml, line \d+: not valid YAML"):
        load("manifest", p)


def test_manifest_nan_and_shape_errors(tmp_path):
    p, a, _ = _setup(tmp_path)
    a[2, 1] = np.nan
    np.save(tmp_path / "a.npy", a)
    ds = load("manifest", p)
    with pytest.raises(ValidationError, match=r"a\.npy: responses contain 1 non-finite"):
        ds.responses("sub01", "storya")
    np.save(tmp_path / "a.npy", np.zeros((12, 5), np.float32))
    ds = load("manifest", p)
    np.testing.assert_array_equal(ds.responses("sub01", "storyb"), np.load(tmp_path / "b.npy"))  # still read
    with pytest.raises(ValidationError, match=r"a\.npy: has 5 targets but .*b\.npy has 6"):
        ds.responses("sub01", "storya")


def test_manifest_repeats_give_ceilings(tmp_path):
    """Repeats listed in the manifest give a noise ceiling: CCmax of the listed files, near
    1 for targets whose repeats share a strong signal."""
    from brainalign.encoding.api import dataset_ceiling

    rng = np.random.default_rng(1)
    n, T = 9, 6  # storyb's rows and the targets
    signal = rng.standard_normal((n, T))
    signal[:, 3:] = 0.0  # targets 3-5: no signal, only noise
    files = []
    for i in range(3):
        rep = signal + 0.2 * rng.standard_normal((n, T))
        np.save(tmp_path / f"b_rep{i}.npy", rep.astype(np.float32))
        files.append(f"b_rep{i}.npy")
    extra = f"repeats:\n  sub01:\n    storyb: [{', '.join(files)}]\n"
    p, _, _ = _setup(tmp_path, manifest=MANIFEST + extra)
    ds = load("manifest", p)
    assert ds.has_repeats("sub01", "storyb") and not ds.has_repeats("sub01", "storya")
    assert ds.repeats("sub01", "storyb").shape == (3, n, T)
    assert ds.info["ceiling"].startswith("from the repeats listed in")
    c = dataset_ceiling(ds, "sub01", ["storyb"])
    assert c.shape == (T,)
    assert np.all(c[:3] > 0.9)  # a shared signal: near the ceiling of 1
    from brainalign.encoding import noise_ceiling

    stacked = np.stack([np.load(tmp_path / f) for f in files])  # the files, in the listed order
    np.testing.assert_allclose(c, noise_ceiling(stacked, method="ccmax"), rtol=1e-5, equal_nan=True)
    # one repeat is not enough; a repeat with other rows, or of a story the subject lacks, is named
    p.write_text(MANIFEST.format(space="{targets: 6}", a="a.npy", b="b.npy") + "repeats:\n  sub01:\n    storyb: [b_rep0.npy]\n")
    with pytest.raises(ValidationError, match=r"line 19: 1 repeat file\(s\); a noise ceiling needs at least 2"):
        load("manifest", p)
    np.save(tmp_path / "short.npy", np.zeros((4, T), np.float32))
    p.write_text(MANIFEST.format(space="{targets: 6}", a="a.npy", b="b.npy")
                 + "repeats:\n  sub01:\n    storyb: [b_rep0.npy, short.npy]\n")
    with pytest.raises(ValidationError, match=r"short\.npy: repeat of 'storyb' has 4 rows but the story's responses have 9"):
        load("manifest", p)
    p.write_text(MANIFEST.format(space="{targets: 6}", a="a.npy", b="b.npy")
                 + "repeats:\n  sub01:\n    storyc: [b_rep0.npy, b_rep1.npy]\n")
    with pytest.raises(ValidationError, match=r"sub01 has no responses for story 'storyc'"):
        load("manifest", p)
