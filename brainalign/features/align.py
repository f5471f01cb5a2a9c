"""Words <-> tokens, from a fast tokenizer's character offsets.

The story is read as its words joined by single spaces. Each token covers a span of
characters of that text (offsets into the original string, so lower-casing, accent
stripping and byte-level splitting do not matter); each word covers its own span. A
token belongs to every word whose span it overlaps. A word's feature is the state of the
last token overlapping it (``how="last"``, the state after reading the whole word) or
the mean over its tokens (``how="mean"``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import ValidationError

__all__ = ["Alignment", "align_words", "special_tokens"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Alignment:
    """Token ids of a story and where each word's tokens are.

    Attributes
    ----------
    input_ids : int64 array (n_tokens,)
        The story's tokens, without special tokens.
    offsets : int64 array (n_tokens, 2)
        Character span of each token in ``text``.
    word_first, word_last : int64 arrays (n_words,)
        First and last token index of each word (inclusive). A word with no token of its
        own (possible only for odd characters a tokenizer drops) borrows the last token
        before it (the state after reading up to it).
    text : str
    """

    input_ids: np.ndarray
    offsets: np.ndarray
    word_first: np.ndarray
    word_last: np.ndarray
    text: str

    @property
    def n_tokens(self) -> int:
        return int(self.input_ids.size)

    @property
    def n_words(self) -> int:
        return int(self.word_last.size)

    def word_tokens(self, i: int) -> np.ndarray:
        """Token indices of word ``i``."""
        return np.arange(self.word_first[i], self.word_last[i] + 1)


def _word_spans(words: Sequence[str]) -> tuple[str, np.ndarray, np.ndarray]:
    starts, ends, pos = [], [], 0
    for w in words:
        starts.append(pos)
        pos += len(w)
        ends.append(pos)
        pos += 1
    return " ".join(words), np.asarray(starts, dtype=np.int64), np.asarray(ends, dtype=np.int64)


#: above this fraction of a story's tokens being the tokenizer's unknown token, the
#: features do not see the words: warned once per process and vocabulary (size, unknown id)
UNKNOWN_WARN = 0.2
_warned_unknown: set = set()


def _check_coverage(ids: np.ndarray, tokenizer, story: str) -> None:
    """Warn when the tokenizer does not know most of the story's words (e.g. a model
    trained by ``train-tiny --task induction/modular``, whose vocabulary is the task's
    symbols: every word becomes the unknown token)."""
    unk = getattr(tokenizer, "unk_token_id", None)
    if unk is None:  # byte-level BPE (GPT-2, Pythia, OLMo; their unk is None or <|endoftext|>): every text has tokens
        return
    frac = float(np.mean(ids == unk))
    if frac <= UNKNOWN_WARN:
        return
    key = (len(tokenizer), unk)  # one warning for all the checkpoints of a run, not one per story and checkpoint
    if key not in _warned_unknown:
        _warned_unknown.add(key)
        log.warning(
            "story %r: %.0f%% of its %d tokens are the tokenizer's unknown token %r (tokenizer %s, %d tokens): "
            "the model does not see these words: its features carry no word identity (only how many words there "
            "are and where), so its brain alignment measures at most the word rate. A model trained on a synthetic "
            "task (train-tiny --task induction/modular) knows only the task's symbols; its internal states are "
            "not affected.",
            story, 100 * frac, ids.size, tokenizer.unk_token,
            getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__, len(tokenizer),
        )


def align_words(words: Sequence[str], tokenizer, *, story: str = "<story>") -> Alignment:
    """Tokenize ``" ".join(words)`` with a fast tokenizer and map words to tokens.

    Parameters
    ----------
    words : sequence of str
    tokenizer : transformers fast tokenizer
        Must return offsets (``tokenizer.is_fast``).
    story : str
        Story name, for error messages.
    """
    if not getattr(tokenizer, "is_fast", False):
        raise ValidationError(
            f"tokenizer {type(tokenizer).__name__} is not a fast tokenizer: word alignment needs "
            "character offsets (load it with use_fast=True, or convert it with the `tokenizers` library)"
        )
    words = [str(w) for w in words]
    if not words:
        raise ValidationError(f"story {story!r}: no words to align")
    text, w_start, w_end = _word_spans(words)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, return_attention_mask=False,
                    verbose=False)  # whole stories are longer than the model: windows come later
    ids = np.asarray(enc["input_ids"], dtype=np.int64)
    offsets = np.asarray(enc["offset_mapping"], dtype=np.int64).reshape(-1, 2)
    if ids.size == 0:
        raise ValidationError(f"story {story!r}: the tokenizer produced no tokens")
    _check_coverage(ids, tokenizer, story)
    # owner[c] = last token covering character c (tokens come in text order)
    owner = np.full(len(text) + 1, -1, dtype=np.int64)
    first_owner = np.full(len(text) + 1, -1, dtype=np.int64)
    for t in range(ids.size - 1, -1, -1):
        a, b = offsets[t]
        if b > a:
            first_owner[a:b] = t
    for t in range(ids.size):
        a, b = offsets[t]
        if b > a:
            owner[a:b] = t
    n = len(words)
    word_first = np.empty(n, dtype=np.int64)
    word_last = np.empty(n, dtype=np.int64)
    prev_last = -1
    orphans = []
    for i in range(n):
        seg = owner[w_start[i] : w_end[i]]
        seg = seg[seg >= 0]
        if seg.size:
            word_last[i] = seg.max()
            f = first_owner[w_start[i] : w_end[i]]
            word_first[i] = f[f >= 0].min()
        else:
            orphans.append(i)
            word_last[i] = word_first[i] = prev_last
        prev_last = word_last[i]
    if orphans:
        if word_last[0] < 0:
            nxt = int(np.flatnonzero(word_last >= 0)[0]) if np.any(word_last >= 0) else None
            if nxt is None:
                raise ValidationError(f"story {story!r}: no word produced any token")
            lead = np.flatnonzero(word_last < 0)
            lead = lead[lead < nxt]
            word_last[lead] = word_first[lead] = word_first[nxt]
        log.warning(
            "story %r: %d word(s) have no token of their own (e.g. %r); they take the state of the "
            "token before them",
            story,
            len(orphans),
            words[orphans[0]],
        )
    word_first = np.minimum(word_first, word_last)
    return Alignment(ids, offsets, word_first, word_last, text)


def special_tokens(tokenizer) -> tuple[list[int], list[int]]:
    """The ids a tokenizer adds before and after a text (``[CLS]``/``[SEP]``, ``<s>``...)."""
    probe = "hello"
    bare = list(tokenizer(probe, add_special_tokens=False)["input_ids"])
    full = list(tokenizer(probe, add_special_tokens=True)["input_ids"])
    for k in range(len(full) - len(bare) + 1):
        if full[k : k + len(bare)] == bare:
            return full[:k], full[k + len(bare) :]
    return [], []
