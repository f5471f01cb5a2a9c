"""Choosing a himalaya backend once, and the few array operations the solvers need.

``backend="auto"`` picks ``torch_cuda`` (or ``cupy``) when a GPU is there, else
``torch`` on the CPU when PyTorch is installed (its float32 GEMMs are faster than
NumPy's OpenBLAS on the machines we measured), else ``numpy``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from typing import Any

import numpy as np

from ..errors import ValidationError

log = logging.getLogger(__name__)

__all__ = ["resolve_backend", "available_memory", "using_backend"]

_KNOWN = ("numpy", "torch", "torch_cuda", "cupy")
_AUTO_ORDER = ("torch_cuda", "cupy", "torch", "numpy")


def _try_backend(name: str):
    """The himalaya backend module ``name`` if it imports and runs here, else None."""
    from himalaya.backend import get_backend, set_backend

    previous = get_backend().name
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            b = set_backend(name, on_error="raise")
            x = b.asarray(np.eye(2, dtype=np.float32))
            float(b.to_numpy(x @ x).sum())
        return b
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # noqa: BLE001 - himalaya's GPU backends call
        # pytest.skip() (a BaseException) at import when pytest is loaded and no GPU exists
        log.debug("himalaya backend %s unavailable: %s", name, exc)
        return None
    finally:
        set_backend(previous)


def resolve_backend(backend: Any = "auto"):
    """Return a himalaya backend module from a name (``"auto"``, ``"numpy"``...) or module.

    Raises
    ------
    ValidationError
        Unknown name, or a named backend that does not work on this machine.
    """
    if hasattr(backend, "name") and hasattr(backend, "asarray"):
        return backend
    if backend is None or backend == "auto":
        for name in _AUTO_ORDER:
            b = _try_backend(name)
            if b is not None:
                return b
        raise ValidationError("no himalaya backend works on this machine (not even numpy)")
    if backend not in _KNOWN:
        raise ValidationError(f"backend must be 'auto' or one of {_KNOWN}, got {backend!r}")
    b = _try_backend(backend)
    if b is None:
        raise ValidationError(
            f"himalaya backend {backend!r} does not work on this machine "
            "(run `brainalign doctor` to see which backends do)"
        )
    return b


@contextlib.contextmanager
def using_backend(b):
    """Temporarily make ``b`` himalaya's global backend (for calling himalaya estimators)."""
    from himalaya.backend import get_backend, set_backend

    previous = get_backend().name
    set_backend(b.name)
    try:
        yield b
    finally:
        set_backend(previous)


def is_gpu(b) -> bool:
    return b.name in ("torch_cuda", "cupy")


def available_memory(b) -> int:
    """Bytes free for arrays on ``b``'s device (GPU free memory, or CPU MemAvailable)."""
    if b.name == "torch_cuda":
        import torch

        free, _ = torch.cuda.mem_get_info()
        return int(free)
    if b.name == "cupy":
        import cupy

        free, _ = cupy.cuda.runtime.memGetInfo()
        return int(free)
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return 4 * 1024**3


def to_device(b, x, dtype: str = "float32"):
    """``x`` (numpy) as an array of backend ``b`` in ``dtype``.

    Read-only inputs (the dataset's cached responses) are only read here; torch warns
    about sharing their memory, which is safe since nothing writes to the result.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return b.asarray(np.ascontiguousarray(x), dtype=dtype)


def eigh_many(b, mats: list) -> list:
    """Eigendecompositions of symmetric matrices in float64 (ascending eigenvalues).

    On the CPU: SciPy's LAPACK divide and conquer (``syevd``), one matrix after another,
    each using all BLAS threads. Measured on an idle 2-core machine (6 matrices of
    3,072 x 3,072) it took 19-21 s where ``syevr`` on one thread per matrix, the
    matrices spread over the cores, took 38-39 s, and ``torch.linalg.eigh`` 31 s
    (1,000 x 1,000: 0.84 s, 1.4 s and 1.2 s). On a GPU: the backend's own solver.
    """
    out = []
    for M in mats:
        if b.name in ("torch_cuda", "cupy"):
            M = b.asarray(M, dtype="float64")
            M = 0.5 * (M + M.T)
            if b.name == "torch_cuda":
                import torch

                out.append(torch.linalg.eigh(M))
            else:
                import cupy

                out.append(cupy.linalg.eigh(M))
            continue
        import scipy.linalg

        Mn = np.asarray(b.to_numpy(M), dtype=np.float64)
        w, v = scipy.linalg.eigh(0.5 * (Mn + Mn.T), driver="evd", check_finite=False, overwrite_a=True)
        out.append((b.asarray(w, dtype="float64"), b.asarray(v, dtype="float64")))
    return out
