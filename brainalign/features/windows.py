"""Context windows over a story's tokens.

Causal models: strided, overlapping windows. Window ``k`` reads tokens
``[start_k, end_k)`` and *outputs* (keeps the states of) ``[out_k, end_k)``; the output
ranges tile the story exactly once, and every output token sees at least
``context_tokens - stride`` tokens before it (or all of them, near the start). A causal
model's state of a token depends only on the tokens before it in its window, so each
token's state equals a forward pass over exactly that left context.

With ``stride <= context_tokens // 2`` every window is at most ``context_tokens`` long,
at least half of it is left context, and the tokens processed are at most
``2 x n_tokens``.

Encoders (bidirectional): a word's state must not see the words after it, so each word
gets its own window ending at its last token (:func:`encoder_windows`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import ValidationError

__all__ = ["Window", "causal_windows", "encoder_windows", "tokens_processed"]


@dataclass(frozen=True)
class Window:
    """Read tokens ``[start, end)``, keep the states of ``[out, end)``."""

    start: int
    out: int
    end: int

    @property
    def length(self) -> int:
        return self.end - self.start

    @property
    def n_out(self) -> int:
        return self.end - self.out


def _check(context_tokens: int, stride: int | None) -> int:
    if not isinstance(context_tokens, (int, np.integer)) or context_tokens < 2:
        raise ValidationError(f"context_tokens must be an integer >= 2, got {context_tokens!r}")
    if stride is None:
        stride = context_tokens // 2
    if not isinstance(stride, (int, np.integer)) or not 1 <= stride <= context_tokens // 2:
        raise ValidationError(
            f"stride must be an integer in [1, context_tokens // 2 = {context_tokens // 2}] so that at least "
            f"half the window is left context, got {stride!r}"
        )
    return int(stride)


def causal_windows(n_tokens: int, context_tokens: int, stride: int | None = None) -> list[Window]:
    """Strided windows covering ``n_tokens`` tokens (see module docstring).

    The first window reads ``min(n_tokens, context_tokens)`` tokens and keeps them all;
    each next one keeps the following ``stride`` tokens and reads the
    ``context_tokens - stride`` before them as context.
    """
    stride = _check(context_tokens, stride)
    if n_tokens <= 0:
        return []
    left = context_tokens - stride
    first_end = min(n_tokens, context_tokens)
    wins = [Window(0, 0, first_end)]
    out = first_end
    while out < n_tokens:
        end = min(out + stride, n_tokens)
        wins.append(Window(out - left, out, end))
        out = end
    return wins


def encoder_windows(word_first: np.ndarray, word_last: np.ndarray, context_tokens: int) -> list[Window]:
    """One window per word: the ``context_tokens`` tokens ending at the word's last token;
    it keeps the states of the word's own tokens."""
    _check(context_tokens, 1)
    wins = []
    for f, t in zip(np.asarray(word_first, dtype=np.int64), np.asarray(word_last, dtype=np.int64)):
        end = int(t) + 1
        start = max(0, end - context_tokens)
        wins.append(Window(start, max(start, int(f)), end))
    return wins


def tokens_processed(windows: list[Window]) -> int:
    return int(sum(w.length for w in windows))
