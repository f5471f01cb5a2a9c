"""Dataset adapters: stories (words + times) and responses, aligned row for row.

``load(name, root=..., subjects=..., **options)`` picks an adapter from the registry:

* ``"lebel2023"`` -- OpenNeuro ds003020 (LeBel et al. 2023), :mod:`.lebel2023`
* ``"narratives"`` -- OpenNeuro ds002345 (Nastase et al. 2021), :mod:`.narratives`
* ``"manifest"`` -- a user's own data described by a YAML file, :mod:`.manifest`
* ``"simulated"`` -- generated responses with a known ground truth, :mod:`.simulated`
"""

from __future__ import annotations

import importlib
import inspect
import os
from collections.abc import Sequence
from typing import Any

from ..errors import ValidationError
from .base import Dataset

__all__ = ["Dataset", "load", "simulate", "available", "REGISTRY"]

#: name -> (module, one-line description)
REGISTRY: dict[str, tuple[str, str]] = {
    "lebel2023": ("lebel2023", "LeBel et al. 2023, OpenNeuro ds003020: 8 subjects, up to 84 stories, volume, TR 2 s"),
    "narratives": ("narratives", "Nastase et al. 2021, OpenNeuro ds002345: 345 subjects, fsaverage6 surfaces, TR 1.5 s"),
    "manifest": ("manifest", "your own data, described by a YAML manifest (root = the YAML file)"),
    "simulated": ("simulated", "generated responses on fsaverage5 with a known ground truth (no root needed)"),
}


def available() -> dict[str, str]:
    """Registered dataset names and what they are."""
    return {k: v[1] for k, v in REGISTRY.items()}


def _module(name: str):
    if name not in REGISTRY:
        raise ValidationError(f"unknown dataset {name!r}; known: {', '.join(REGISTRY)}")
    return importlib.import_module(f"{__name__}.{REGISTRY[name][0]}")


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
    """
    if name == "simulated":
        from .simulated import simulate as _simulate

        _check_options(name, _simulate, options)
        ds = _simulate(**options)
        return ds.subset(list(subjects)) if subjects is not None else ds
    adapter = _module(name).load
    _check_options(name, adapter, options, taken=("root", "subjects"))
    return adapter(root, subjects=subjects, **options)


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


def simulate(*args: Any, **kwargs: Any):
    """Simulated dataset with a ground truth; see :func:`brainalign.datasets.simulated.simulate`."""
    from .simulated import simulate as _simulate

    return _simulate(*args, **kwargs)


simulate.__doc__ = importlib.import_module(f"{__name__}.simulated").simulate.__doc__
