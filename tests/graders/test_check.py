"""`difflens graders check`: label validation, metrics on known verdicts, the CLI's JSON."""
from __future__ import annotations

import json

import pytest

from difflens.errors import DataError
from difflens.graders.check import check_coherence, check_relevance, check_scale, load_cases


def _write(tmp_path, rows, name="labels.jsonl"):
    p = tmp_path / name
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return p


class SaysCoherentIfShort:
    name = "fake"

    def grade(self, texts):
        return [len(t) < 20 for t in texts]


def test_coherence_metrics_on_known_verdicts(tmp_path):
    cases = load_cases("coherence", _write(tmp_path, [
        {"text": "short and fine", "coherent": True},          # TP
        {"text": "a long coherent sentence here", "coherent": True},  # FN
        {"text": "salad", "coherent": False},                   # FP
        {"text": "long long long long long long", "coherent": False},  # TN
    ]))
    res = check_coherence(SaysCoherentIfShort(), cases)
    assert (res.accuracy, res.precision, res.recall, res.f1, res.n) == (0.5, 0.5, 0.5, 0.5, 4)
    assert set(res.summary()) == {"kind", "grader", "accuracy", "precision", "recall", "f1", "n"}
    assert len(res.mistakes()) == 2


class MarksCake:
    name = "fake"

    def grade(self, tokens, description, frequent_tokens):
        return ["cake" in t for t in tokens]


def test_relevance_is_scored_per_token(tmp_path):
    cases = load_cases("relevance", _write(tmp_path, [
        {"description": "bakes cakes", "frequent_tokens": [], "tokens": ["▁cake", "Ġcakes", "the", "oven"],
         "relevant": [True, True, False, True]},
    ]))
    res = check_relevance(MarksCake(), cases)
    assert res.n == 4 and res.accuracy == 0.75 and res.precision == 1.0 and res.recall == pytest.approx(2 / 3)


class PicksLargest:
    name = "fake"

    def choose(self, candidates):
        s = max(candidates)
        return s, candidates[s][:2], "largest"


def test_scale_accuracy_and_token_precision(tmp_path):
    cases = load_cases("scale", _write(tmp_path, [
        {"scales": {"0.5": ["a"], "2.0": ["▁cake", "▁oven", "x"]}, "best": [2.0], "coherent_tokens": ["cake", "oven"]},
        {"scales": {"0.5": ["a"], "1": ["b", "c"]}, "best": [0.5]},
    ]))
    res = check_scale(PicksLargest(), cases)
    assert res.accuracy == 0.5 and res.n == 2
    assert res.precision == 1.0 and res.recall == 1.0  # markers are stripped before comparing


@pytest.mark.parametrize("kind,row,needle", [
    ("coherence", {"text": "x"}, "missing field 'coherent'"),
    ("coherence", {"text": "x", "coherent": "yes"}, "must be bool"),
    ("relevance", {"description": "d", "frequent_tokens": [], "tokens": ["a", "b"], "relevant": [True]},
     "one per token"),
    ("scale", {"scales": {"0.5": ["a"]}, "best": [3.0]}, "not among the offered"),
    ("scale", {"scales": {"big": ["a"]}, "best": [1]}, "not a number"),
])
def test_bad_labels_are_named_with_line(tmp_path, kind, row, needle):
    p = _write(tmp_path, [row])
    with pytest.raises(DataError, match=needle) as e:
        load_cases(kind, p)
    assert f"{p}:1" in str(e.value)


def test_cli_json_and_bad_kind(tmp_path):
    from typer.testing import CliRunner

    from difflens.cli import app

    p = _write(tmp_path, [{"description": "bakes cakes", "frequent_tokens": ["oven"], "tokens": ["▁oven", "▁the"],
                           "relevant": [True, False]}])
    res = CliRunner().invoke(app, ["graders", "check", "relevance", str(p), "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output[res.output.index('{"kind"'):].strip())  # (model-loading bars go to stderr)
    assert set(out) == {"kind", "grader", "accuracy", "precision", "recall", "f1", "n"} and out["n"] == 2
    res = CliRunner().invoke(app, ["graders", "check", "vibes", str(p)])
    assert res.exit_code == 2 and "unknown grader kind" in res.output
    res = CliRunner().invoke(app, ["graders", "check", "coherence", str(tmp_path / "none.jsonl")])
    assert res.exit_code == 2 and "does not exist" in " ".join(res.output.split())
