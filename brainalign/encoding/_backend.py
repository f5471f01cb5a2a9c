"""One backend object per fit: a himalaya backend module and the few operations brainalign needs.

``backend="auto"`` picks ``torch_cuda`` (or ``cupy``) when a GPU is there, else
``torch`` on the CPU when PyTorch is installed (its float32 GEMMs are faster than
NumPy's OpenBLAS on the machines we measured), else ``numpy``.

:func:`resolve_backend` turns a name (or a himalaya backend module) into a
:class:`Backend` once; the solvers call its methods (:meth:`Backend.rows`,
:meth:`Backend.eigh_many`...) instead of branching on backend names. Resolving never
touches himalaya's global backend (modules are imported directly, and whether a backend
works is probed once per process); only :meth:`Backend.as_global`, for calling
himalaya's own estimators, sets it, and it restores the previous one.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import logging
import os
import warnings
from typing import Any

import numpy as np

from ..errors import ValidationError

log = logging.getLogger(__name__)

__all__ = ["Backend", "resolve_backend", "KNOWN_BACKENDS"]

#: backend names accepted besides ``"auto"``
KNOWN_BACKENDS = ("numpy", "torch", "torch_cuda", "cupy")
_AUTO_ORDER = ("torch_cuda", "cupy", "torch", "numpy")


@functools.lru_cache(maxsize=None)
def _working_module(name: str):
    """The himalaya backend module ``name`` if it imports and runs here, else None
    (probed once per process; himalaya's global backend is left alone)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            module = importlib.import_module(f"himalaya.backend.{name}")
            x = module.asarray(np.eye(2, dtype=np.float32))
            float(module.to_numpy(x @ x).sum())
        return module
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # noqa: BLE001 - himalaya's GPU backends call
        # pytest.skip() (a BaseException) at import when pytest is loaded and no GPU exists
        log.debug("himalaya backend %s unavailable: %s", name, exc)
        return None


def _try_backend(name: str) -> "Backend | None":
    """A :class:`Backend` for ``name`` if it works on this machine, else None."""
    module = _working_module(name)
    return None if module is None else Backend(module)


class Backend:
    """A himalaya backend module with the operations brainalign's solvers need.

    Array functions of the module (``asarray``, ``to_numpy``, ``zeros_like``, ``sqrt``,
    ``clip``...) are reached as attributes of this object; what differs between
    devices is a method here, so no solver branches on a backend's name.
    """

    def __init__(self, module) -> None:
        self.module = module
        self.name: str = module.name
        self.is_torch = self.name in ("torch", "torch_cuda")
        self.is_gpu = self.name in ("torch_cuda", "cupy")

    def __getattr__(self, attr: str):
        # only called for attributes not found on the object: the module's functions
        return getattr(self.__dict__["module"], attr)

    def __repr__(self) -> str:
        return f"Backend({self.name!r})"

    # -- arrays ------------------------------------------------------------------
    def to_device(self, x, dtype: str = "float32"):
        """``x`` (numpy) as an array of this backend in ``dtype``.

        Read-only inputs (the dataset's cached responses) are only read here; torch warns
        about sharing their memory, which is safe since nothing writes to the result.
        """
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            return self.module.asarray(np.ascontiguousarray(x), dtype=dtype)

    def rows(self, idx: np.ndarray, like):
        """Index array ``idx`` usable on ``like``'s device."""
        if self.is_torch:
            import torch

            return torch.as_tensor(idx, device=like.device)
        if self.name == "cupy":
            import cupy

            return cupy.asarray(idx)
        return idx

    def clamp0(self, lam):
        """Negative eigenvalues (float error) set to 0, as himalaya does when refitting."""
        if self.is_torch:
            return lam.clamp(min=0)
        return self.module.clip(lam, 0, None)

    def eigh_many(self, mats: list) -> list:
        """Eigendecompositions of symmetric matrices in float64 (ascending eigenvalues).

        On the CPU: SciPy's LAPACK divide and conquer (``syevd``), one matrix after another,
        each using all BLAS threads. Measured on an idle 2-core machine (6 matrices of
        3,072 x 3,072) it took 19-21 s where ``syevr`` on one thread per matrix, the
        matrices spread over the cores, took 38-39 s, and ``torch.linalg.eigh`` 31 s
        (1,000 x 1,000: 0.84 s, 1.4 s and 1.2 s). On a GPU: the backend's own solver.
        """
        return [self._eigh_gpu(M) if self.is_gpu else self._eigh_cpu(M) for M in mats]

    def _eigh_gpu(self, M):
        M = self.module.asarray(M, dtype="float64")
        M = 0.5 * (M + M.T)
        if self.name == "torch_cuda":
            import torch

            return torch.linalg.eigh(M)
        import cupy

        return cupy.linalg.eigh(M)

    def _eigh_cpu(self, M):
        import scipy.linalg

        Mn = np.asarray(self.module.to_numpy(M), dtype=np.float64)
        w, v = scipy.linalg.eigh(0.5 * (Mn + Mn.T), driver="evd", check_finite=False, overwrite_a=True)
        return self.module.asarray(w, dtype="float64"), self.module.asarray(v, dtype="float64")

    # -- device ------------------------------------------------------------------
    def available_memory(self) -> int:
        """Bytes free for arrays on this backend's device (GPU free memory, or CPU MemAvailable)."""
        if self.name == "torch_cuda":
            import torch

            free, _ = torch.cuda.mem_get_info()
            return int(free)
        if self.name == "cupy":
            import cupy

            free, _ = cupy.cuda.runtime.memGetInfo()
            return int(free)
        return _cpu_available_memory()

    @contextlib.contextmanager
    def as_global(self):
        """Make this himalaya's global backend for the block (for calling himalaya's own
        estimators, which read the global); the previous one is restored after."""
        from himalaya.backend import _utils

        previous = _utils.CURRENT_BACKEND
        _utils.set_backend(self.name)
        try:
            yield self
        finally:
            _utils.CURRENT_BACKEND = previous


def _cpu_available_memory() -> int:
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


def resolve_backend(backend: Any = "auto") -> Backend:
    """A :class:`Backend` from a name (``"auto"``, ``"numpy"``...), a himalaya backend
    module, or a :class:`Backend` (returned as is).

    Raises
    ------
    ValidationError
        Unknown name, or a named backend that does not work on this machine.
    """
    if isinstance(backend, Backend):
        return backend
    if hasattr(backend, "name") and hasattr(backend, "asarray"):
        return Backend(backend)
    if backend is None or backend == "auto":
        for name in _AUTO_ORDER:
            b = _try_backend(name)
            if b is not None:
                return b
        raise ValidationError("no himalaya backend works on this machine (not even numpy)")
    if backend not in KNOWN_BACKENDS:
        raise ValidationError(f"backend must be 'auto' or one of {KNOWN_BACKENDS}, got {backend!r}")
    b = _try_backend(backend)
    if b is None:
        raise ValidationError(
            f"himalaya backend {backend!r} does not work on this machine "
            "(run `brainalign doctor` to see which backends do)"
        )
    return b
