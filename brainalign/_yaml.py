"""YAML files validated by pydantic, with errors that name the file, line and key.

Used by the run config (``brainalign.sweep.config``) and the dataset manifest
(``brainalign.datasets.manifest``).
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from collections.abc import Mapping
from typing import Any, TypeVar, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict
from pydantic import ValidationError as PydanticValidationError

from .errors import ValidationError, check_data_file

__all__ = ["StrictModel", "UniqueKeyLoader", "line_of", "parse_yaml", "read_text_utf8", "read_yaml_model"]

M = TypeVar("M", bound=BaseModel)


class StrictModel(BaseModel):
    """A pydantic model that refuses unknown keys."""

    model_config = ConfigDict(extra="forbid")


class UniqueKeyLoader(yaml.SafeLoader):
    """A ``yaml.SafeLoader`` that refuses a key given twice in one mapping.

    Plain PyYAML keeps the last value of a repeated key without a word, so a setting
    written twice silently loses one of its values. Merge keys (``<<: *anchor``) may
    still be overridden, as YAML intends.
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, yaml.Node] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.setdefault(key, key_node)
            except TypeError:  # an unhashable key: the base class reports it
                continue
            if first is not key_node:
                raise yaml.constructor.ConstructorError(
                    None, None,
                    f"key {key!r} is given twice in the same mapping, on line {first.start_mark.line + 1} "
                    f"and on line {key_node.start_mark.line + 1}; keep one",
                    key_node.start_mark,
                )
        return super().construct_mapping(node, deep=deep)


def parse_yaml(text: str) -> tuple[Any, yaml.Node | None]:
    """(data, node tree) of a YAML document, refusing duplicate keys (:class:`UniqueKeyLoader`).

    The node tree gives line numbers (:func:`line_of`); both are None for an empty document.

    Raises
    ------
    yaml.YAMLError
        Not valid YAML, or a key given twice in one mapping.
    """
    loader = UniqueKeyLoader(text)
    try:
        root = loader.get_single_node()
        return (loader.construct_document(root) if root is not None else None), root
    finally:
        loader.dispose()


def read_text_utf8(path: str | os.PathLike, name: str | None = None) -> str:
    """The text of ``path``, decoded as UTF-8.

    Raises
    ------
    ValidationError
        The file is not UTF-8 text; the message names the file, the line and the byte offset
        of the first bad byte.
    """
    raw = Path(path).read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise ValidationError(
            f"{name or path}, line {line} (byte {exc.start}): not UTF-8 text ({exc.reason}, byte "
            f"0x{raw[exc.start]:02x}); save the file as UTF-8"
        ) from None


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


def _models_in(tp: Any) -> list[type[BaseModel]]:
    """The pydantic models an annotation can hold (through Optional, Union, list, dict)."""
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return [tp]
    return [m for a in get_args(tp) for m in _models_in(a)]


def _is_mapping(tp: Any) -> bool:
    """Whether an annotation is (or may be) a dict of models: its next location part is a key."""
    if get_origin(tp) in (dict, Mapping):
        return True
    return any(_is_mapping(a) for a in get_args(tp))


def _keys_at(model: type[BaseModel], loc: tuple) -> list[str] | None:
    """The keys accepted where an unknown key was found (``loc``: pydantic's error
    location, union tags included, the unknown key last): those of every model that can
    stand there (all branches of a union), or None when the location is not followed."""
    cands: list[type[BaseModel]] = [model]
    mapping = False
    for part in loc[:-1]:
        if isinstance(part, int):  # a list item: the same models
            continue
        if any(c.__name__ == part for c in cands):  # a union tag naming the branch tried: keep them all,
            continue                                 # so that each branch's error gives the same hint
        fields = [c.model_fields[part] for c in cands if part in c.model_fields]
        if not fields:
            if mapping:  # a key of a dict of models
                mapping = False
                continue
            return None
        cands = list(dict.fromkeys(m for f in fields for m in _models_in(f.annotation)))
        mapping = any(_is_mapping(f.annotation) for f in fields)
        if not cands:
            return None
    if not cands:
        return None
    return list(dict.fromkeys(f.alias or name for c in cands for name, f in c.model_fields.items() if not f.exclude))


def _unknown_key(model: type[BaseModel], loc: tuple) -> str:
    keys = _keys_at(model, loc)
    if not keys:
        return "unknown key"
    close = difflib.get_close_matches(str(loc[-1]), keys, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return f"unknown key ({hint}accepted: {', '.join(keys)})"


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
        text = read_text_utf8(path, name)
        try:
            data, root = parse_yaml(text)
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
            if err["type"] == "extra_forbidden":
                msg = _unknown_key(model, tuple(err["loc"]))
            elif err["type"] == "value_error":  # our own validators: their message, without "Value error, "
                msg = str(err.get("ctx", {}).get("error", err["msg"]))
            else:
                msg = err["msg"]
            lines.append(f"{name}, line {line}: {key}: {msg}" if line else f"{name}: {key}: {msg}")
        raise ValidationError(f"invalid {what}:\n  " + "\n  ".join(dict.fromkeys(lines))) from None
