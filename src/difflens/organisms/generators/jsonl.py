"""Finetuning data of ``jsonl`` organisms: texts or chats read from a local JSONL file."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ...errors import ConfigError, DataError
from ..spec import JsonlData, OrganismSpec

__all__ = ["load_jsonl_data"]


def load_jsonl_data(spec: OrganismSpec) -> list[str] | list[list[dict[str, str]]]:
    """Read a ``jsonl`` organism's data: texts, or chats if ``data.messages_field`` is set.

    A relative ``data.path`` is resolved against the directory of the spec file (else the
    current directory). Raises :class:`DataError` naming the file and line on bad records.
    """
    data = spec.data
    if not isinstance(data, JsonlData):
        raise ConfigError(f"organism {spec.name!r} has data kind {data.kind!r}, not 'jsonl'.")
    path = Path(data.path).expanduser()
    if not path.is_absolute() and spec.source_path:
        path = Path(spec.source_path).parent / path
    if not path.is_file():
        raise DataError(
            f"{path}: data file of organism {spec.name!r} not found; fix 'data.path' in "
            f"{spec.source_path or 'the spec'} (relative paths start at the spec's directory)."
        )
    out: list[Any] = []
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(f"{path}:{lineno}: invalid JSON ({err.msg}).") from None
            field = data.messages_field or data.text_field
            if not isinstance(rec, dict) or field not in rec:
                raise DataError(
                    f"{path}:{lineno}: record has no field {field!r}; set 'data.text_field' / "
                    "'data.messages_field' in the spec to the right key."
                )
            value = rec[field]
            if data.messages_field:
                ok = isinstance(value, list) and all(
                    isinstance(m, dict) and isinstance(m.get("role"), str)
                    and isinstance(m.get("content"), str)
                    for m in value
                )
                if not ok:
                    raise DataError(
                        f"{path}:{lineno}: {field!r} must be a list of {{'role', 'content'}} dicts."
                    )
                out.append([{"role": m["role"], "content": m["content"]} for m in value])
            else:
                if not isinstance(value, str):
                    raise DataError(f"{path}:{lineno}: field {field!r} must be a string.")
                if value.strip():
                    out.append(value)
    if not out:
        raise DataError(f"{path}: no usable records for organism {spec.name!r}.")
    return out
