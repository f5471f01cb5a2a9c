"""Dataset adapters: stories (words + times) and responses, aligned row for row.

``load(name, root=..., subjects=..., **options)`` looks ``name`` up in :data:`REGISTRY`
and calls that adapter's ``load`` (the contract: :mod:`brainalign.datasets.base`):

* ``"lebel2023"`` -- OpenNeuro ds003020 (LeBel et al. 2023), :mod:`.lebel2023`
* ``"narratives"`` -- OpenNeuro ds002345 (Nastase et al. 2021), :mod:`.narratives`
* ``"manifest"`` -- a user's own data described by a YAML file, :mod:`.manifest`
* ``"simulated"`` -- generated responses with a known ground truth, :mod:`.simulated`

A new adapter is one module (or object) with a ``load`` function plus one
:func:`register_dataset` call (or one line in :data:`REGISTRY`). Adapter modules are
imported on first use, never when this package is.
"""

from __future__ import annotations

import importlib
import inspect
import os
from collections.abc import Callable, Sequence
from types import SimpleNamespace
from typing import Any

from ..errors import ValidationError
from ._corpus import stories_dir
from .base import Dataset, DatasetAdapter, UnknownSubjectError

__all__ = [
    "Dataset",
    "DatasetAdapter",
    "UnknownSubjectError",
    "load",
    "simulate",
    "available",
    "adapter",
    "register_dataset",
    "stories_dir",
    "REGISTRY",
]

#: name -> (adapter, one-line description). The adapter is a module path (imported on
#: first use) or an object with a ``load`` function (see :class:`DatasetAdapter`).
REGISTRY: dict[str, tuple[str | DatasetAdapter, str]] = {
    "lebel2023": (
        "brainalign.datasets.lebel2023",
        "LeBel et al. 2023, OpenNeuro ds003020: 8 subjects, up to 84 stories, volume, TR 2 s",
    ),
    "narratives": (
        "brainalign.datasets.narratives",
        "Nastase et al. 2021, OpenNeuro ds002345: 345 subjects, fsaverage6 surfaces, TR 1.5 s",
    ),
    "manifest": ("brainalign.datasets.manifest", "your own data, described by a YAML manifest (root = the YAML file)"),
    "simulated": (
        "brainalign.datasets.simulated",
        "generated responses on fsaverage5 with a known ground truth (no root needed)",
    ),
}


def register_dataset(
    name: str,
    adapter: str | DatasetAdapter | Callable[..., Dataset],
    description: str | None = None,
    *,
    replace: bool = False,
) -> None:
    """Make ``datasets.load(name, ...)`` (and ``brainalign datasets check name``) use ``adapter``.

    Parameters
    ----------
    name : str
        The dataset's name.
    adapter : str, object with ``load``, or callable
        A module path (``"mypkg.mydata"``, imported on first use), a module or object
        with ``load`` (and optionally ``check``) following :class:`DatasetAdapter`, or a
        bare ``load`` function.
    description : str, optional
        One line for ``brainalign datasets list`` (default: the adapter's
        ``description`` attribute, else the first line of its docstring).
    replace : bool
        Allow replacing an adapter registered under ``name``.

    Raises
    ------
    ValidationError
        ``name`` is taken (and not ``replace``), or ``adapter`` has no ``load``.
    """
    if not isinstance(name, str) or not name:
        raise ValidationError(f"register_dataset(): name must be a non-empty string, got {name!r}")
    if name in REGISTRY and not replace:
        raise ValidationError(f"dataset {name!r} is already registered; pass replace=True to replace it")
    if not isinstance(adapter, str):
        if not callable(getattr(adapter, "load", None)):
            if not callable(adapter):
                raise ValidationError(f"dataset {name!r}: the adapter must have a load() function, got {adapter!r}")
            adapter = SimpleNamespace(load=adapter, __doc__=adapter.__doc__)
        if description is None:
            doc = (getattr(adapter, "__doc__", None) or "").strip()
            description = getattr(adapter, "description", None) or (doc.splitlines()[0] if doc else "")
    REGISTRY[name] = (adapter, description or "")


def available() -> dict[str, str]:
    """Registered dataset names and what they are."""
    return {k: v[1] for k, v in REGISTRY.items()}


def adapter(name: str) -> DatasetAdapter:
    """The adapter registered as ``name`` (its module imported now if need be).

    Raises
    ------
    ValidationError
        No adapter is registered under ``name``.
    """
    if name not in REGISTRY:
        raise ValidationError(f"unknown dataset {name!r}; known: {', '.join(REGISTRY)}")
    target = REGISTRY[name][0]
    return importlib.import_module(target) if isinstance(target, str) else target


def load(
    name: str,
    root: str | os.PathLike | None = None,
    subjects: Sequence[str] | None = None,
    **options: Any,
) -> Dataset:
    """Load a dataset by name.

    Parameters
    ----------
    name : str
        One of :func:`available`.
    root : path, optional
        Where the dataset lives (the YAML file for ``"manifest"``; ignored by
        ``"simulated"``, whose ``options`` go to :func:`simulate`).
    subjects : sequence of str, optional
        Keep only these subjects (default: all found).
    **options
        Adapter options (see each adapter's ``load``).

    Raises
    ------
    ValidationError
        An unknown dataset, or an option its adapter does not take.
    UnknownSubjectError
        A subject the dataset does not have (adapters whose data are downloaded raise
        :class:`~brainalign.errors.DataNotFoundError` for a subject not on disk).
    """
    load_fn = adapter(name).load
    _check_options(name, load_fn, options, taken=("root", "subjects"))
    return load_fn(root, subjects=subjects, **options)


def _check_options(name: str, func, options: dict[str, Any], taken: Sequence[str] = ()) -> None:
    """Raise a :class:`ValidationError` naming the ``options`` that ``func`` does not take."""
    params = inspect.signature(func).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    accepted = [k for k, p in params.items() if k not in taken and p.kind is not inspect.Parameter.VAR_POSITIONAL]
    unknown = [k for k in options if k not in accepted]
    if unknown:
        raise ValidationError(
            f"dataset {name!r}: unknown option(s) {', '.join(map(repr, unknown))}; "
            f"it accepts: {', '.join(accepted) or 'no options'}"
        )


def __getattr__(name: str) -> Any:
    # ``datasets.simulate`` is :func:`brainalign.datasets.simulated.simulate`, imported on first use
    if name == "simulate":
        return importlib.import_module(f"{__name__}.simulated").simulate
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
