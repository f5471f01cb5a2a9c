"""What this machine can do for brainalign: versions, ridge backends, GPU, folders."""

from __future__ import annotations

import importlib.metadata as md
import platform
import shutil
import sys

from . import config
from ._version import __version__

__all__ = ["collect", "report", "working_backends"]

STACK = (
    "numpy", "scipy", "scikit-learn", "himalaya", "torch", "transformers", "tokenizers",
    "huggingface-hub", "h5py", "praatio", "xarray", "zarr", "pandas", "nibabel", "nilearn",
    "ruptures", "matplotlib", "pydantic", "dask", "distributed", "dask-jobqueue", "cupy", "pycortex",
)
BACKENDS = ("numpy", "torch", "torch_cuda", "cupy")


def _version(dist: str) -> str | None:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return None


def working_backends() -> dict[str, str]:
    """Each himalaya backend -> "ok" or the reason it does not work here.

    A backend counts as working when it imports *and* runs a small matrix product.
    """
    import warnings

    from himalaya.backend import get_backend, set_backend

    previous = get_backend().name
    out = {}
    try:
        for name in BACKENDS:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    b = set_backend(name, on_error="raise")
                    x = b.asarray([[1.0, 2.0], [3.0, 4.0]], dtype="float32")
                    float(b.to_numpy(x @ x).sum())
                out[name] = "ok"
            except (KeyboardInterrupt, SystemExit):
                raise
            except BaseException as exc:  # noqa: BLE001 - any failure means "not usable here";
                # BaseException because himalaya's GPU backends call pytest.skip() at
                # import when pytest is loaded and the GPU library is absent
                msg = str(exc).splitlines()[0][:80] if str(exc) else ""
                out[name] = f"unavailable ({type(exc).__name__}: {msg})"
    finally:
        set_backend(previous)
    return out


def _gpu() -> str:
    try:
        import torch

        if torch.cuda.is_available():
            names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
            return f"yes: {', '.join(names)}"
    except Exception:  # noqa: BLE001
        pass
    if shutil.which("nvidia-smi"):
        return "nvidia-smi present, but torch sees no CUDA device"
    return "no"


def collect() -> dict:
    """Everything ``brainalign doctor`` prints, as a dict."""
    folders = {"brainalign cache": str(config.cache_dir()), "brainalign data home": str(config.data_home())}
    try:
        from huggingface_hub import constants

        folders["Hugging Face hub cache"] = str(constants.HF_HUB_CACHE)
    except Exception:  # noqa: BLE001
        pass
    try:
        from nilearn.datasets import get_data_dirs

        folders["nilearn data home"] = str(get_data_dirs()[0])
    except Exception:  # noqa: BLE001
        pass
    return {
        "brainalign": __version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "packages": {d: _version(d) for d in STACK},
        "himalaya backends": working_backends(),
        "gpu": _gpu(),
        "folders": folders,
    }


def report() -> str:
    info = collect()
    lines = [f"brainalign {info['brainalign']} on Python {info['python']} ({info['platform']})", "", "packages:"]
    for name, ver in info["packages"].items():
        lines.append(f"  {name:16s} {ver or 'not installed'}")
    lines += ["", "himalaya backends:"]
    for name, state in info["himalaya backends"].items():
        lines.append(f"  {name:16s} {state}")
    lines += ["", f"GPU: {info['gpu']}", "", "folders:"]
    for name, path in info["folders"].items():
        lines.append(f"  {name:22s} {path}")
    return "\n".join(lines)
