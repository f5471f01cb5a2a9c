"""The project's own story corpus (``datasets/stories/*.txt``) with natural word timings.

The texts are original English narrative prose written for brainalign. They are read
from the top-level ``datasets/stories`` folder of the repository (brainalign is used as
an editable install, ``pip install -e .``); ``$BRAINALIGN_STORIES`` points elsewhere.

Word timings imitate read-aloud speech: a word lasts longer the more syllables it has,
words follow each other with short gaps, and commas, sentence ends and paragraph breaks
add pauses, for about 2.5 words per second overall. Timings are seeded and reproducible.
"""

from __future__ import annotations

import os
import re
import zlib
from pathlib import Path

import numpy as np

from ..errors import DataNotFoundError

__all__ = ["stories_dir", "story_names", "read_story_text", "tokenize", "natural_timing", "lebel_tr_times"]

_WORD = re.compile(r"[A-Za-z0-9]+(?:['\u2019\-][A-Za-z0-9]+)*")
_VOWELS = re.compile(r"[aeiouy]+")


def stories_dir() -> Path:
    """Folder holding the corpus ``<name>.txt`` files."""
    env = os.environ.get("BRAINALIGN_STORIES")
    if env:
        return Path(env).expanduser()
    return Path(__file__).resolve().parents[2] / "datasets" / "stories"


def story_names() -> list[str]:
    """Names of the corpus stories, sorted."""
    d = stories_dir()
    if not d.is_dir():
        raise DataNotFoundError(
            f"story corpus folder {d} does not exist: brainalign reads its stories from the repository's "
            "datasets/stories (install with `pip install -e .` from a checkout) or from $BRAINALIGN_STORIES"
        )
    names = sorted(p.stem for p in d.glob("*.txt"))
    if not names:
        raise DataNotFoundError(f"story corpus folder {d} holds no .txt stories")
    return names


def read_story_text(name: str) -> str:
    p = stories_dir() / f"{name}.txt"
    if not p.is_file():
        raise DataNotFoundError(f"story {name!r}: {p} does not exist (corpus stories: {', '.join(story_names())})")
    return p.read_text(encoding="utf-8")


def tokenize(text: str) -> tuple[list[str], np.ndarray]:
    """Spoken words of ``text`` and the pause class after each word.

    Pause classes: 0 none, 1 comma/semicolon/colon/dash, 2 sentence end, 3 paragraph end.
    """
    words: list[str] = []
    pauses: list[int] = []
    for para in re.split(r"\n\s*\n", text.strip()):
        matches = list(_WORD.finditer(para))
        for i, m in enumerate(matches):
            words.append(m.group(0).replace("\u2019", "'"))
            end = matches[i + 1].start() if i + 1 < len(matches) else len(para)
            between = para[m.end() : end]
            if i + 1 == len(matches):
                pauses.append(3)
            elif re.search(r"[.!?]", between):
                pauses.append(2)
            elif re.search(r"[,;:]|--|\u2014", between):
                pauses.append(1)
            else:
                pauses.append(0)
    return words, np.asarray(pauses, dtype=np.int64)


def _syllables(word: str) -> int:
    w = word.lower()
    n = len(_VOWELS.findall(w))
    if w.endswith("e") and n > 1 and not w.endswith(("le", "ee")):
        n -= 1
    return max(1, n)


def _rng(seed: int, name: str) -> np.random.Generator:
    return np.random.default_rng([int(seed), zlib.crc32(name.encode("utf-8"))])


def natural_timing(
    words: list[str], pauses: np.ndarray, seed: int = 0, name: str = "", start: float = 0.3
) -> tuple[np.ndarray, np.ndarray]:
    """Onsets and offsets (seconds) of read-aloud speech, about 2.5 words per second.

    A word lasts ``0.09 + 0.12 * syllables`` seconds times a gamma-distributed jitter;
    gaps are ~40 ms between words, ~0.3 s at commas, ~0.7 s at sentence ends and
    ~1.2 s between paragraphs. Seeded by ``seed`` and the story ``name``.
    """
    rng = _rng(seed, name)
    n = len(words)
    syl = np.array([_syllables(w) for w in words], dtype=np.float64)
    dur = (0.09 + 0.12 * syl) * rng.gamma(12.0, 1 / 12.0, n)
    base_gap = np.array([0.04, 0.30, 0.70, 1.20])[pauses]
    gap = base_gap * rng.gamma(6.0, 1 / 6.0, n)
    onsets = start + np.concatenate([[0.0], np.cumsum(dur + gap)[:-1]])
    onsets = np.round(onsets, 4)
    offsets = np.round(onsets + dur, 4)
    return onsets, offsets


def lebel_tr_times(n_untrimmed: int, tr: float = 2.0, lead: float = 10.0, pad: int = 5, trim: int = 5) -> np.ndarray:
    """TR times of the response rows that ds003020 keeps, seconds from sound onset.

    The reference pipeline builds ``n = n_untrimmed - pad`` times ``t_k = tr * k - lead
    + tr / 2`` (TR midpoints, the sound starting ``lead`` seconds after the first TR)
    and keeps rows ``[pad + trim : n - trim]``; those line up with the ``.hf5`` rows.
    """
    n = int(n_untrimmed) - int(pad)
    k = np.arange(n, dtype=np.float64)
    t = tr * k - lead + tr / 2.0
    return t[pad + trim : n - trim]
