"""Typed artifacts: round trip and clear errors on corruption."""
from __future__ import annotations

import pytest

from difflens.rundir import artifacts as A
from difflens.adl.logit_lens import logit_lens


def test_artifacts_roundtrip_and_corruption(tmp_path, tiny_run):
    pair, _, c = tiny_run
    res = logit_lens(pair, c, [0], k=3)
    p = tmp_path / "ll.json"
    A.save(res, p)
    assert A.load(A.LogitLensResult, p) == res
    p.write_text("{broken")
    from difflens.errors import RunDirError

    with pytest.raises(RunDirError, match="corrupt"):
        A.load(A.LogitLensResult, p)


# every character str.splitlines() splits at beyond \n and \r; JSON writers leave them unescaped in strings
_LINE_BREAKERS = "\u2028\u2029\x85\x1c\x1d\x1e\x0b\x0c"


def test_jsonl_keeps_texts_holding_unicode_line_separators(tmp_path):
    """A steered sample that holds U+2028 (seen in a real demo run: "bananas.\u2028Labels …") is one
    record, not a corrupt line: every JSONL reader splits at \\n only."""
    import json

    from difflens.files import jsonl_lines, read_jsonl

    gens = [A.Generation(prompt="p", position=3, alpha=0.3, sample=i, text=f"a{ch}b") for i, ch in
            enumerate(_LINE_BREAKERS)]
    gens.append(A.Generation(prompt="p", position=None, alpha=0.0, sample=99, text="two\nlines\r\nand a\ttab"))
    p = tmp_path / "generations.jsonl"
    A.save_jsonl(gens, p)
    assert A.load_jsonl(A.Generation, p) == gens
    assert [g["text"] for g in read_jsonl(p)] == [g.text for g in gens]
    # a file written with \r\n line ends reads the same
    p.write_bytes(p.read_bytes().replace(b"\n", b"\r\n"))
    assert A.load_jsonl(A.Generation, p) == gens
    assert jsonl_lines('{"a": "x\u2028y"}\n\n{"b": 1}\r\n') == ['{"a": "x\u2028y"}', "", '{"b": 1}', ""]
    assert json.loads(jsonl_lines('{"a": "x\u2028y"}\n')[0]) == {"a": "x\u2028y"}


def test_other_jsonl_readers_keep_unicode_line_separators(tmp_path):
    """A local corpus file (``--data texts.jsonl``) reads the same way."""
    import json

    from difflens.data.corpora import _local_texts

    p = tmp_path / "texts.jsonl"
    p.write_text("".join(json.dumps({"text": f"x{ch}y"}, ensure_ascii=False) + "\n" for ch in _LINE_BREAKERS),
                 encoding="utf-8")
    assert _local_texts(p, "text") == [f"x{ch}y" for ch in _LINE_BREAKERS]
