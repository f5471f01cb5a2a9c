"""Reading word (and phone) timings from transcripts.

Praat TextGrids (long and short text formats) are parsed by praatio; times are kept
exactly as written. Non-speech labels (``sp``, ``{BR}``, ``sentence_start``...) are
dropped, as ds003020's reference pipeline does.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import ValidationError, check_data_file
from .stimulus import Story

__all__ = ["NON_WORDS", "is_non_word", "Tier", "read_textgrid", "story_from_textgrid"]

#: labels that mark silence, breath, laughter, noise... rather than words (lower case)
NON_WORDS = frozenset({"sentence_start", "sentence_end", "br", "lg", "ls", "ns", "sp", "sil", "cg", "ig"})
_BRACED = re.compile(r"^\{.*\}$")


def is_non_word(label: str) -> bool:
    """True for an empty label, a listed non-word, or any label written in braces."""
    lab = label.strip()
    return lab == "" or lab.lower() in NON_WORDS or bool(_BRACED.match(lab))


@dataclass(frozen=True)
class Tier:
    """Labels with their start and end times (seconds), non-words removed."""

    name: str
    labels: tuple[str, ...]
    starts: np.ndarray
    ends: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)


def _pick(names: list[str], key: str, fallback: int | None) -> str | None:
    exact = [n for n in names if n.strip().lower() in (key, key + "s")]
    if exact:
        return exact[0]
    loose = [n for n in names if key in n.strip().lower()]
    if loose:
        return loose[0]
    named = any(k in n.lower() for n in names for k in ("word", "phone"))
    if fallback is not None and len(names) == 2 and not named:
        return names[fallback]
    return None


def read_textgrid(
    path: str | os.PathLike,
    word_tier: str | int | None = None,
    phone_tier: str | int | None = None,
) -> tuple[Tier, Tier | None]:
    """Read the word tier and, when there is one, the phone tier of a TextGrid.

    Tiers are found by name (``word``/``words``, ``phone``/``phones``), else, in a file
    with exactly two unnamed-looking tiers, by position as in ds003020 (phones first,
    words second). Pass a name or an index to choose explicitly.

    Returns
    -------
    words, phones : Tier, Tier or None

    Raises
    ------
    ValidationError
        The file cannot be parsed, has no word tier, or its word tier holds no words.
    """
    from praatio import textgrid as tgio
    from praatio.utilities.errors import PraatioException

    p = check_data_file(path, what="TextGrid")
    try:
        tg = tgio.openTextgrid(str(p), includeEmptyIntervals=False, duplicateNamesMode="rename", reportingMode="silence")
    except (PraatioException, ValueError, IndexError, KeyError, UnicodeDecodeError) as exc:
        raise ValidationError(f"TextGrid {p}: cannot be parsed ({type(exc).__name__}: {exc})") from exc
    names = list(tg.tierNames)

    def resolve(spec: str | int | None, key: str, fallback: int) -> str | None:
        if spec is None:
            return _pick(names, key, fallback)
        if isinstance(spec, int):
            if not -len(names) <= spec < len(names):
                raise ValidationError(f"TextGrid {p}: has {len(names)} tiers, no tier index {spec}")
            return names[spec]
        if spec not in names:
            raise ValidationError(f"TextGrid {p}: no tier named {spec!r} (tiers: {names})")
        return spec

    wname = resolve(word_tier, "word", 1)
    if wname is None:
        raise ValidationError(f"TextGrid {p}: no word tier found (tiers: {names}); pass word_tier= to choose one")
    pname = resolve(phone_tier, "phone", 0)
    if pname == wname:
        pname = None

    def tier(name: str) -> Tier:
        t = tg.getTier(name)
        if not hasattr(t, "entries") or t.entryType.__name__ != "Interval":
            raise ValidationError(f"TextGrid {p}: tier {name!r} is not an interval tier")
        keep = [e for e in t.entries if not is_non_word(e.label)]
        return Tier(
            name=name,
            labels=tuple(e.label.strip() for e in keep),
            starts=np.array([e.start for e in keep], dtype=np.float64),
            ends=np.array([e.end for e in keep], dtype=np.float64),
        )

    words = tier(wname)
    if len(words) == 0:
        raise ValidationError(f"TextGrid {p}: word tier {wname!r} holds no words")
    phones = tier(pname) if pname is not None else None
    return words, phones


def story_from_textgrid(
    path: str | os.PathLike,
    tr: float,
    tr_times: np.ndarray,
    name: str | None = None,
    word_tier: str | int | None = None,
    phone_tier: str | int | None = None,
) -> Story:
    """Build a :class:`Story` from a TextGrid and the TR times of its response rows."""
    words, phones = read_textgrid(path, word_tier=word_tier, phone_tier=phone_tier)
    return Story(
        name=name or Path(path).stem,
        words=words.labels,
        onsets=words.starts,
        offsets=words.ends,
        tr=tr,
        tr_times=tr_times,
        phones=(phones.labels, phones.starts, phones.ends) if phones is not None else None,
        source=str(path),
    )
