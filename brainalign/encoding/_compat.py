"""Old keyword names still accepted, with a DeprecationWarning."""

from __future__ import annotations

import functools
import warnings

__all__ = ["renamed_keywords", "warn_renamed"]


def warn_renamed(where: str, old: str, new: str, stacklevel: int = 3) -> None:
    """Warn that ``where``'s ``old=`` keyword is now ``new=``."""
    warnings.warn(f"{where}: {old}= is deprecated, use {new}= (same meaning)", DeprecationWarning,
                  stacklevel=stacklevel)


def renamed_keywords(**renames: str):
    """Decorator: keyword ``old`` of the function is passed on as ``renames[old]``, with a
    DeprecationWarning; giving both names is a TypeError, as any repeated argument is."""

    def deco(func):
        @functools.wraps(func)
        def wrapper(*args, **kwargs):
            for old, new in renames.items():
                if old in kwargs:
                    if new in kwargs:
                        raise TypeError(f"{func.__name__}() got both {old}= (deprecated) and {new}=")
                    warn_renamed(f"{func.__name__}()", old, new)
                    kwargs[new] = kwargs.pop(old)
            return func(*args, **kwargs)

        wrapper.renamed_keywords = dict(renames)
        return wrapper

    return deco
