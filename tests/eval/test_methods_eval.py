"""The per-method evaluation parts (issue 20 item 7): each method's evidence graded by the same
graders, baselines and controls beside it, and the experiment's per-method numbers."""
from __future__ import annotations

import json

import numpy as np
import pytest

from difflens.eval.methods import MethodEval, evaluate_method
from difflens.methods.evidence import Evidence, TextSet, TokenList, available, evidence, mining_evidence
from difflens.rundir.layout import RunLayout


class Known:
    name = "known"

    def __init__(self, words):
        self.words, self.calls = set(words), 0

    def identity(self):
        return {"backend": "test", "words": sorted(self.words)}

    def grade(self, tokens, description, frequent):
        self.calls += 1
        return [t.strip().lower() in self.words for t in tokens]


def _embed(texts):
    """A deterministic toy embedding: counts of a few topic words, normalised (cake texts point one way)."""
    vocab = ["cake", "oven", "river", "war", "money"]
    out = []
    for t in texts:
        v = np.array([t.lower().count(w) for w in vocab], dtype=float) + 1e-3
        out.append(v / np.linalg.norm(v))
    return np.stack(out)


def test_relevance_per_role_and_group_is_exact():
    ev = Evidence(method="adl", dataset="wiki", title="t", token_lists=[
        TokenList(role="method", name="δ̄", group="position 0", tokens=["cake", "oven", "the", "a"]),
        TokenList(role="method", name="δ̄", group="position 1", tokens=["cake", "the", "a", "of"]),
        TokenList(role="baseline", name="h̄_base", group="position 0", tokens=["the", "a", "of", "to"]),
        TokenList(role="control", name="random", tokens=["oven", "x", "y", "z"])])
    grader = Known({"cake", "oven"})
    me = evaluate_method(ev, grader=grader, description="cakes", frequent=["cake"])
    assert me.relevance["δ̄"].max == 50.0 and me.relevance["δ̄"].mean == pytest.approx(37.5)
    assert me.relevance["δ̄"].lists[0].tokens[0] == ("cake", True)
    assert me.role_relevance("method") == 50.0 and me.role_relevance("method", "mean") == pytest.approx(37.5)
    assert me.role_relevance("baseline") == 0.0 and me.role_relevance("control") == 25.0
    assert grader.calls == 4
    assert me.skipped["similarity"].startswith("no finetuning data")
    assert me.skipped["identification"].startswith("no candidates")


def test_relevance_skipped_with_reasons():
    ev = Evidence(method="amplify", dataset="wiki", title="t",
                  texts=[TextSet(role="method", name="amplified", texts=["cake cake"])])
    assert evaluate_method(ev).skipped["relevance"] == "no relevance grader configured"
    assert evaluate_method(ev, grader=Known(set())).skipped["relevance"].startswith("no true description")
    assert evaluate_method(ev, grader=Known(set()), description="d").skipped["relevance"] == \
        "the method surfaces texts, not tokens"


def test_similarity_to_ft_ranks_on_topic_texts_above_off_topic():
    ev = Evidence(method="amplify", dataset="wiki", title="t", texts=[
        TextSet(role="method", name="amplified", texts=["cake and oven", "a cake"]),
        TextSet(role="baseline", name="ft", texts=["a river", "the war"]),
        TextSet(role="control", name="noise", texts=["money money", "river"]),
        TextSet(role="baseline", name="empty", texts=["  "])])
    me = evaluate_method(ev, ft_texts=["cake in the oven", "more cake"], embed_fn=_embed)
    assert set(me.similarity) == {"amplified", "ft", "noise"}  # an all-blank set is left out
    assert me.similarity["amplified"].mean > 0.8 > 0.1 > me.similarity["ft"].mean
    assert me.role_similarity("method") > me.role_similarity("control")
    assert me.similarity["amplified"].n == 4  # 2 texts × 2 references


def test_identification_reads_only_the_methods_own_evidence():
    ev = Evidence(method="mining", dataset="wiki", title="t", token_lists=[
        TokenList(role="method", name="m", tokens=["cake", "oven"]),
        TokenList(role="baseline", name="b", tokens=["river", "war", "river"])])
    assert ev.identification_texts() == ["cake oven"]


def _mining_json(tokens, ft_tokens, fp="f1"):
    entry = lambda t: {"token_id": 0, "token": t, "top_k_count": 1, "top_k_fraction": 0.5, "positive_fraction": 0.9,  # noqa: E731
                       "mean_diff": 1.0, "bottom_k_count": 0, "ft_top_k_count": 1, "base_top_k_count": 0}
    return {"method": "mining", "fingerprint": fp, "dataset": "wiki", "n_samples": 10, "tokens": 8, "n_positions": 80,
            "seconds": 3.5, "top_k": 5, "layer": None, "vocab_size": 100,
            "rankings": {"top_k": [entry(t) for t in tokens], "ft_top_k": [entry(t) for t in ft_tokens]}}


def test_mining_evidence_baseline_control_and_missing(tmp_path):
    layout = RunLayout(tmp_path / "run")
    path = layout.method_result("wiki", "mining")
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(_mining_json(["cake", "oven"], [" the", ","])))
    ev = mining_evidence(layout, "wiki")
    assert [t.role for t in ev.token_lists] == ["method", "baseline"]
    assert ev.token_lists[0].tokens == ["cake", "oven"] and ev.token_lists[1].tokens == [" the", ","]
    assert "--control noise" in ev.missing[0]
    assert ev.cost == {"seconds": 3.5, "forward_tokens": 160.0}
    cpath = layout.method_result("wiki", "mining", "noise")
    cpath.parent.mkdir(parents=True)
    cpath.write_text(json.dumps(_mining_json(["zz"], ["qq"], fp="f2")))
    ev = mining_evidence(layout, "wiki")
    assert ev.lists("control")[0].tokens == ["zz"] and not ev.missing
    assert available(layout) == {"mining": "wiki"}
    from difflens.errors import ConfigError, RunDirError

    with pytest.raises(RunDirError, match="difflens diff .* --methods kl"):
        evidence(layout, "kl", "wiki")
    with pytest.raises(ConfigError, match="unknown method"):
        evidence(layout, "sae", "wiki")


def test_experiment_cell_numbers_from_the_methods_block():
    me = MethodEval(method="mining", dataset="wiki", title="Diff mining", cost={"seconds": 2.0, "forward_tokens": 10.0},
                    relevance={"m": {"role": "method", "max": 40.0, "mean": 40.0, "lists": []},
                               "b": {"role": "baseline", "max": 5.0, "mean": 5.0, "lists": []}},
                    identification={"rank": 2, "n_candidates": 16, "true": "cake_bake", "scores": {}})
    row = me.numbers()
    assert (row["relevance"], row["baseline"], row["control"], row["rank"]) == (40.0, 5.0, None, 2)
    assert row["seconds"] == 2.0 and row["similarity"]["method"] is None


def test_methods_experiment_cells_and_run_config(tmp_path):
    from difflens.run.experiment import METHOD_ORGANISMS, ExperimentConfig, _cells, _run_config

    cfg = ExperimentConfig(name="methods", out=tmp_path, quick=True)
    assert _cells(cfg) == [(o, 0.0) for o in METHOD_ORGANISMS]
    rc = _run_config(cfg, "cake_bake", 0.0, "organism:cake_bake", tmp_path / "r")
    assert rc.methods == ["adl", "mining", "kl", "amplify"] and "methods" in rc.stages
    assert rc.diff.samples == 300 and rc.diff.control == "noise"
    assert rc.diff.amplify["prompts"] == rc.steering.prompts[:6] or len(rc.diff.amplify["prompts"]) == 6
    assert "methods" in rc.evaluate.parts and "causal" not in rc.evaluate.parts
    from difflens.errors import ConfigError

    with pytest.raises(ConfigError, match="no_such_organism"):
        _cells(ExperimentConfig(name="methods", out=tmp_path, organisms=["no_such_organism"]))


def test_run_config_methods_are_validated(tmp_path):
    from difflens.errors import ConfigError
    from difflens.run.config import load_config

    p = tmp_path / "run.yaml"
    p.write_text("out: r\nfinetuned: x\nmethods: [adl, sae]\n")
    with pytest.raises(ConfigError, match="methods"):
        load_config(p)
    p.write_text("out: r\nfinetuned: x\nmethods: [mining]\ndiff: {samples: -1}\n")
    with pytest.raises(ConfigError, match="diff.samples"):
        load_config(p)
    p.write_text("out: r\nfinetuned: x\nmethods: [mining, kl]\ndiff: {control: none, tokens: 16}\n")
    cfg = load_config(p)
    assert cfg.methods == ["mining", "kl"] and cfg.diff.tokens == 16


def test_topic_groups_split_themes_and_skip_punctuation():
    from difflens.eval.topics import topic_groups

    themes = {"cake": [1, 0.1, 0], "oven": [0.9, 0.2, 0], "river": [0, 1, 0.1], "lake": [0.1, 0.9, 0],
              "money": [0, 0, 1]}

    def embed(texts):
        return np.array([np.array(themes[t], dtype=float) / np.linalg.norm(themes[t]) for t in texts])

    toks = [" cake", " oven", ",", " river", "cake", " lake", " 12", " money"]
    groups = topic_groups(toks, k=3, embed_fn=embed)
    flat = [t for g in groups for t in g.tokens]
    assert sorted(flat) == sorted(["cake", "oven", "river", "lake", "money"])  # deduplicated, no punctuation/digits
    assert sorted(sorted(g.tokens) for g in groups) == [["cake", "oven"], ["lake", "river"], ["money"]]
    assert [g.weight for g in groups] == [2.0, 2.0, 1.0]
    assert topic_groups([",", " "], embed_fn=embed) == []
    ev = Evidence(method="mining", dataset="wiki", title="t",
                  token_lists=[TokenList(role="method", name="m", tokens=toks)])
    assert len(evaluate_method(ev, embed_fn=embed).topics) == 3
