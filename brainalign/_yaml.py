"""YAML files validated by pydantic, with errors that name the file, line and key.

Used by the run config (``brainalign.sweep.config``) and the dataset manifest
(``brainalign.datasets.manifest``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict
from pydantic import ValidationError as PydanticValidationError

from .errors import ValidationError, check_data_file

__all__ = ["StrictModel", "line_of", "read_yaml_model"]

M = TypeVar("M", bound=BaseModel)


class StrictModel(BaseModel):
    """A pydantic model that refuses unknown keys."""

    model_config = ConfigDict(extra="forbid")


def line_of(node: yaml.Node | None, loc: tuple) -> int | None:
    """1-based line of the YAML node at path ``loc``, or of its deepest existing parent.

    For a key that exists, the key's own line (where a user would look).
    """
    if node is None:
        return None
    line = node.start_mark.line + 1
    for key in loc:
        if isinstance(node, yaml.MappingNode):
            hit = next(((k, v) for k, v in node.value if k.value == str(key)), None)
            if hit is None:
                break
            line, node = hit[0].start_mark.line + 1, hit[1]
        elif isinstance(node, yaml.SequenceNode) and isinstance(key, int) and key < len(node.value):
            node = node.value[key]
            line = node.start_mark.line + 1
        else:
            break
    return line


def _is_union_tag(part: Any) -> bool:
    """pydantic inserts the union branch tried ('list[str]', 'EveryN'...) into error locations."""
    return isinstance(part, str) and (part[:1].isupper() or "[" in part or part.startswith("literal") or part in ("str", "int", "float"))


def read_yaml_model(source: str | os.PathLike | dict, model: type[M], what: str) -> tuple[M, yaml.Node | None, str]:
    """Read ``source`` (a YAML file or a dict) and validate it as ``model``.

    Returns the model, the YAML node tree (None for a dict, for :func:`line_of`) and the
    source's name.

    Raises
    ------
    ValidationError
        One line per problem: ``<file>, line <n>: <key.path>: <what is wrong>``.
    """
    if isinstance(source, dict):
        data, root, name = source, None, what
    else:
        path = check_data_file(source, what=what)
        name = str(path)
        text = Path(path).read_text(encoding="utf-8")
        try:
            data, root = yaml.safe_load(text), yaml.compose(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f", line {mark.line + 1}" if mark else ""
            raise ValidationError(f"{name}{where}: not valid YAML ({getattr(exc, 'problem', None) or exc})") from exc
        if not isinstance(data, dict):
            raise ValidationError(f"{name}: a {what} is a YAML mapping of keys to values")
    try:
        return model.model_validate(data), root, name
    except PydanticValidationError as exc:
        lines = []
        for err in exc.errors():
            loc = tuple(p for p in err["loc"] if not _is_union_tag(p))
            key = ".".join(str(p) for p in loc) or "(top level)"
            line = line_of(root, loc)
            msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
            lines.append(f"{name}, line {line}: {key}: {msg}" if line else f"{name}: {key}: {msg}")
        raise ValidationError(f"invalid {what}:\n  " + "\n  ".join(dict.fromkeys(lines))) from None
