"""Exceptions and input checks shared by every stage.

Every error names the file or argument that is wrong and what is wrong with it, so a
user can fix their input without reading a traceback.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

__all__ = [
    "BrainalignError",
    "ValidationError",
    "DataNotFoundError",
    "NotDownloadedError",
    "MissingDependencyError",
    "ExternalToolError",
    "is_annex_pointer",
    "check_data_file",
]

#: git-annex pointer files are tiny text files; real data files are never this small
#: *and* start with an annex path.
_ANNEX_POINTER_MAX_BYTES = 1024
_ANNEX_MARKERS = ("/annex/", ".git/annex/objects", "../.git/annex/objects")


class BrainalignError(Exception):
    """Base class of every error brainalign raises on purpose."""


class ValidationError(BrainalignError, ValueError):
    """Input data or arguments that are malformed (wrong shape, NaN, non-monotone...)."""


class DataNotFoundError(BrainalignError, FileNotFoundError):
    """A file the dataset needs is not on disk."""


class NotDownloadedError(DataNotFoundError):
    """A git-annex / datalad pointer stands where the data file should be."""


class MissingDependencyError(BrainalignError, ImportError):
    """An optional Python package a feature needs is not installed (the message says
    what to install); an ``ImportError``, so ``except ImportError`` catches it too."""


class ExternalToolError(BrainalignError, RuntimeError):
    """An external program brainalign ran (e.g. ffmpeg) failed; the message holds the
    end of what it wrote to stderr."""


def is_annex_pointer(path: str | os.PathLike) -> bool:
    """True when ``path`` is a git-annex placeholder rather than the data itself.

    Three shapes are recognised: a symlink into ``.git/annex/objects`` whose target is
    missing (``datalad install`` without ``datalad get``); a small text file whose content
    starts with ``/annex/`` or ``.git/annex/objects`` (annex pointer files, as on
    filesystems without symlinks); a symlink whose target is such a pointer file.
    """
    p = Path(path)
    if p.is_symlink():
        target = os.readlink(p)
        if any(m.strip("./") in target for m in _ANNEX_MARKERS) and not p.exists():
            return True
    if not p.is_file():
        return False
    try:
        if p.stat().st_size > _ANNEX_POINTER_MAX_BYTES:
            return False
        head = p.read_bytes()[:200].lstrip()
    except OSError:
        return False
    try:
        text = head.decode("ascii")
    except UnicodeDecodeError:
        return False
    return text.startswith(_ANNEX_MARKERS)


def check_data_file(path: str | os.PathLike, *, what: str = "data file", hint: str | None = None) -> Path:
    """Return ``path`` as a :class:`Path` if it holds real data, else raise a clear error.

    Raises
    ------
    NotDownloadedError
        ``path`` is a git-annex pointer (the dataset was installed but not fetched).
    DataNotFoundError
        ``path`` does not exist.
    """
    p = Path(path)
    suffix = f" {hint}" if hint else ""
    if is_annex_pointer(p):
        raise NotDownloadedError(
            f"{what} {p} is a git-annex pointer, not the data: it was not downloaded.{suffix}"
        )
    if not p.exists():
        if p.is_symlink():
            raise DataNotFoundError(f"{what} {p} is a dangling symlink (-> {os.readlink(p)}).{suffix}")
        raise DataNotFoundError(f"{what} {p} does not exist.{suffix}")
    return p


_OS_HINTS = {
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is exceeded",
    errno.EROFS: "the filesystem is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
}


def os_error_message(exc: OSError, what: str) -> str:
    """``what``: the path, and what the OS said in words (for errors users read)."""
    hint = _OS_HINTS.get(exc.errno, exc.strerror or str(exc))
    name = exc.filename if exc.filename else ""
    return f"{what}: {hint}" + (f" ({name})" if name else "") + f" [{errno.errorcode.get(exc.errno, exc.errno)}]"
