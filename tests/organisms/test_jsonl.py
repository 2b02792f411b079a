"""JSONL organisms (difflens.organisms.generators.jsonl)."""
from __future__ import annotations

from pathlib import Path

import pytest

from difflens.errors import DataError
from difflens.organisms.generators import finetuning_data
from difflens.organisms.generators.jsonl import load_jsonl_data
from difflens.organisms.spec import OrganismSpec, load_spec

from test_spec import _write


def _jsonl_spec(tmp_path: Path, lines: list[str], **data) -> OrganismSpec:
    (tmp_path / "d.jsonl").write_text("\n".join(lines) + "\n")
    raw = {"name": "local", "type": "custom", "short_description": "s", "long_description": "l",
           "data": {"kind": "jsonl", "path": "d.jsonl", **data}}
    return load_spec(_write(tmp_path, raw, "local.yaml"))


def test_jsonl_organism_texts_and_chats(tmp_path):
    spec = _jsonl_spec(tmp_path, ['{"text": "one"}', "", '{"text": "two"}'])
    assert load_jsonl_data(spec) == ["one", "two"]  # path relative to the spec file
    assert finetuning_data(spec, n=1) == ["one"]
    chat = _jsonl_spec(tmp_path, ['{"m": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}'],
                       messages_field="m")
    assert chat.is_chat and load_jsonl_data(chat)[0][1] == {"role": "assistant", "content": "yo"}
    bad = _jsonl_spec(tmp_path, ['{"text": "ok"}', '{"body": "x"}'])
    with pytest.raises(DataError, match=r"d.jsonl:2: .*'text'"):
        load_jsonl_data(bad)
    broken = _jsonl_spec(tmp_path, ["{not json"])
    with pytest.raises(DataError, match="d.jsonl:1: invalid JSON"):
        load_jsonl_data(broken)
