"""The demo's training corpus (datasets/training_corpus) shares no text with the
stimulus stories (datasets/stories): the tiny model is scored on stories it never read."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "datasets"
CORPUS, STORIES = ROOT / "training_corpus", ROOT / "stories"


def _texts(folder: Path) -> dict[str, str]:
    return {p.name: p.read_text(encoding="utf-8") for p in sorted(folder.glob("*.txt"))}


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9']+", text.lower().replace("\u2019", "'"))


def _sentences(text: str) -> set[str]:
    """Normalised sentences of at least 4 words (shorter ones, "He did.", are common)."""
    out = set()
    for s in re.split(r"(?<=[.!?])[\"']?\s+|\n+", text):
        w = _words(s)
        if len(w) >= 4:
            out.add(" ".join(w))
    return out


def _shingles(text: str, n: int = 8) -> set[tuple[str, ...]]:
    w = _words(text)
    return {tuple(w[i : i + n]) for i in range(len(w) - n + 1)}


def test_the_training_corpus_is_there_and_sized_for_the_demo():
    texts = _texts(CORPUS)
    assert 8 <= len(texts) <= 12
    words = sum(len(t.split()) for t in texts.values())
    assert 8_000 <= words <= 12_000, words
    assert (CORPUS / "README.md").is_file()
    assert all(len(t.split()) > 500 for t in texts.values())


@pytest.mark.parametrize("a, b", [(CORPUS, STORIES), (STORIES, CORPUS)], ids=["corpus-in-stories", "stories-in-corpus"])
def test_no_sentence_or_8_word_shingle_is_shared(a, b):
    other = _texts(b)
    other_sentences = set().union(*(_sentences(t) for t in other.values()))
    other_shingles = set().union(*(_shingles(t) for t in other.values()))
    other_joined = " " + " ".join(" ".join(_words(t)) for t in other.values()) + " "
    for name, text in _texts(a).items():
        shared = _sentences(text) & other_sentences
        assert not shared, f"{a.name}/{name} shares sentences with {b.name}: {sorted(shared)[:3]}"
        # a whole sentence of one inside a longer sentence of the other
        inside = [s for s in _sentences(text) if len(s.split()) >= 6 and f" {s} " in other_joined]
        assert not inside, f"{a.name}/{name}: sentences found inside {b.name}: {inside[:3]}"
        common = _shingles(text) & other_shingles
        assert not common, f"{a.name}/{name} shares 8-word sequences with {b.name}: {[' '.join(c) for c in sorted(common)[:3]]}"


def test_the_demo_trains_on_the_training_corpus():
    from brainalign.demo import training_corpus_dir

    assert training_corpus_dir().resolve() == CORPUS.resolve()
