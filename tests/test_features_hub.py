"""The offline hub path: a local Hugging Face cache with three revisions of a tiny GPT-NeoX,
loaded through the real ``from_pretrained(..., revision=...)`` code with HF_HUB_OFFLINE=1."""

import numpy as np
import pytest
import torch

from brainalign.errors import DataNotFoundError, ValidationError
from brainalign.features import extract, list_revisions
from brainalign.features import extraction as extract_mod
from brainalign.features.revisions import PYTHIA_TOKENS_PER_STEP
from brainalign.features.testing import tiny_hub_cache
from brainalign.stimulus import Story

REPO = "tiny-org/tiny-neox"
REVS = ["step300", "step100", "step200"]
WORDS = "once upon a time there was a café in zürich where nobody knew what the well-known chef didn't cook".split()


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("hf") / "hub"
    commits = tiny_hub_cache(root, REPO, REVS, arch="gpt_neox", n_layers=2, hidden=32)
    yield root, commits
    torch.set_num_threads(n)


@pytest.fixture
def offline(hub, monkeypatch):
    root, commits = hub
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(root))
    monkeypatch.setenv("HF_HOME", str(root.parent))
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    return root, commits


def _stories():
    on = np.arange(len(WORDS)) * 0.4
    return [Story("tale", WORDS, on, on + 0.3, 2.0, np.arange(3) * 2.0 + 1.0),
            Story("short", WORDS[:7], on[:7], on[:7] + 0.3, 2.0, np.arange(2) * 2.0 + 1.0)]


def test_revisions_load_offline_differ_and_are_cached(offline, monkeypatch):
    root, commits = offline
    stories = _stories()
    assert list_revisions(REPO, hf_cache_dir=root) == ["step100", "step200", "step300"]
    got = {}
    for rev in REVS:
        fs = extract(stories, model=REPO, revision=rev, hf_cache_dir=root, context_tokens=8)
        assert fs.info["commit"] == commits[rev] and fs.info["cache_hits"] == 0
        assert fs.layers == [0, 1, 2] and fs.n_layers == 2
        step = int(rev[4:])
        assert fs.training == {"step": step, "tokens": step * PYTHIA_TOKENS_PER_STEP}
        assert fs.get("tale", 2).shape == (len(WORDS), 32)
        assert fs.metrics["loss"]["tale"] > 0 and set(fs.metrics["activation_norm"]) == {0, 1, 2}
        got[rev] = fs
    for a, b in [("step100", "step200"), ("step200", "step300")]:
        for layer in (0, 2):
            assert not np.allclose(got[a].get("tale", layer), got[b].get("tale", layer))

    # second call: served from the feature cache, the model is never loaded
    def boom(*a, **k):
        raise AssertionError("model loaded on a cache hit")

    monkeypatch.setattr(extract_mod, "load_model", boom)
    again = extract(stories, model=REPO, revision="step200", hf_cache_dir=root, context_tokens=8)
    assert again.info["cache_hits"] == 2 and again.info["commit"] == commits["step200"]
    for layer in again.layers:
        np.testing.assert_array_equal(again.get("tale", layer), got["step200"].get("tale", layer))
    assert again.metrics == got["step200"].metrics and again.training == got["step200"].training


def test_moved_branch_invalidates_and_missing_revision_is_clear(offline, tmp_path):
    root, commits = offline
    stories = _stories()[1:]
    feat_cache = tmp_path / "fc"
    a = extract(stories, model=REPO, revision="step100", hf_cache_dir=root, cache=feat_cache, context_tokens=8)
    ref = root / ("models--" + REPO.replace("/", "--")) / "refs" / "step100"
    old = ref.read_text()
    try:
        ref.write_text(commits["step300"])  # the branch now points at another commit
        b = extract(stories, model=REPO, revision="step100", hf_cache_dir=root, cache=feat_cache, context_tokens=8)
    finally:
        ref.write_text(old)
    assert b.info["cache_hits"] == 0 and b.info["commit"] == commits["step300"]
    assert not np.allclose(a.get("short", 1), b.get("short", 1))
    with pytest.raises(DataNotFoundError, match="step999"):
        extract(stories, model=REPO, revision="step999", hf_cache_dir=root, cache=False)
    with pytest.raises(DataNotFoundError, match="not in the local Hugging Face cache"):
        list_revisions("nobody/nothing", hf_cache_dir=root)


def test_old_cache_dir_keyword_is_the_hf_cache_with_a_warning(offline, tmp_path):
    root, commits = offline
    stories = _stories()[1:]
    with pytest.warns(DeprecationWarning, match=r"cache_dir=\) is deprecated; use hf_cache_dir="):
        assert list_revisions(REPO, cache_dir=root) == ["step100", "step200", "step300"]
    new = extract(stories, model=REPO, revision="step200", hf_cache_dir=root, cache=False, context_tokens=8)
    with pytest.warns(DeprecationWarning, match=r"extract\(cache_dir=\) is deprecated; use hf_cache_dir="):
        old = extract(stories, model=REPO, revision="step200", cache_dir=root, cache=False, context_tokens=8)
    assert old.info["commit"] == new.info["commit"] == commits["step200"]
    np.testing.assert_array_equal(old.get("short", 2), new.get("short", 2))
    with pytest.raises(ValidationError, match="not two different"), pytest.warns(DeprecationWarning):
        extract(stories, model=REPO, revision="step200", cache_dir=root, hf_cache_dir=tmp_path, cache=False)
