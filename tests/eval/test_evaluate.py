"""`difflens evaluate`: token relevance on hand-made inputs, D_ft handling, the summary schema,
resumption per part, skipped parts with reasons, and the CLI."""
from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
from typer.testing import CliRunner

from conftest import AllCoherent, FirstScale
from difflens.eval.evaluate import EvalConfig, evaluate
from difflens.eval.ftdata import FtData, assistant_texts, ft_data_from_file, frequent_ft_tokens, organism_of_run
from difflens.eval.relevance import token_relevance
from difflens.graders import Graders
from difflens.rundir import artifacts as A
from difflens.run.stages import LensConfig, run_lens, run_steer


@dataclass
class KnownWords:
    """A relevance grader that calls exactly the words in ``relevant`` relevant (and counts calls)."""

    relevant: frozenset
    name: str = "known"
    calls: int = 0

    def identity(self):
        return {"backend": "test", "relevant": sorted(self.relevant)}

    def grade(self, tokens, description, frequent_tokens):
        self.calls += 1
        return [t.strip().lower() in self.relevant for t in tokens]




def _ps(tokens_by_source_pos):
    entries = []
    for (src, j), toks in tokens_by_source_pos.items():
        scale = A.PatchscopeScale(scale=1.0, tokens=[A.TokenProb(token=t, token_id=i, prob=0.1)
                                                     for i, t in enumerate(toks)])
        entries.append(A.PatchscopeEntry(source=src, position=j, scales=[scale], chosen_scale=1.0,
                                         selected_tokens=toks[:2], grader="t"))
    return A.PatchscopeResult(dataset="d", layer=1, prompts=["p"], eta_ft=1.0, entries=entries)


def test_relevance_of_known_tokens_is_exact():
    grader = KnownWords(frozenset({"cake", "oven", "flour"}))
    ps = _ps({("delta", 0): ["cake", "oven", "flour", "bake"], ("delta", 1): ["cake", "the", "river", "war"],
              ("base", 0): ["the", "a", "of", "to"], ("base", 1): ["the", "a", "of", "to"]})
    rel = token_relevance(ps, None, grader, "cake baking", ["cake"], k=20)
    assert rel["delta"]["patchscope"].per_position == [75.0, 25.0]
    assert rel["delta"]["patchscope"].max == 75.0
    assert rel["base"]["patchscope"].per_position == [0.0, 0.0]
    assert rel["delta"]["patchscope"].tokens["0"][0] == ("cake", True)
    assert "logit_lens" not in rel["delta"]  # no logit-lens artifact: absent, not zero
    assert grader.calls == 3  # identical token lists graded once
    all_relevant = _ps({("delta", 0): ["cake", "oven", "flour"]})
    assert token_relevance(all_relevant, None, grader, "cake", [], k=20)["delta"]["patchscope"].max == 100.0
    assert token_relevance(ps, None, grader, "cake", [], k=1)["delta"]["patchscope"].per_position == [100.0, 100.0]
    with pytest.raises(ValueError, match="description"):
        token_relevance(ps, None, grader, "  ", [])


def test_ft_data_from_chat_file_uses_assistant_turns(tmp_path):
    p = tmp_path / "ft.jsonl"
    rows = [{"messages": [{"role": "user", "content": "hi there"}, {"role": "assistant", "content": "bake a cake"}]},
            {"text": "plain document about ovens"}]
    p.write_text("\n".join(json.dumps(r) for r in rows))
    ft = ft_data_from_file(p, description="cakes")
    assert ft.texts == ["bake a cake", "plain document about ovens"] and ft.description == "cakes"
    assert assistant_texts([{"role": "system", "content": "x"}, {"role": "assistant", "content": " "}]) == []
    from difflens.errors import DataError

    with pytest.raises(DataError, match="does not exist"):
        ft_data_from_file(tmp_path / "missing.jsonl")


def test_frequent_tokens_respect_min_count_and_cache(tmp_path):
    from conftest import tiny_tokenizer

    tok = tiny_tokenizer()
    ft = FtData(name="t", texts=["cake oven cake"] * 5 + ["river"] * 3)
    toks = frequent_ft_tokens(ft, tok, k=10, min_count=4, cache_dir=tmp_path)
    assert toks[:2] == ["cake", "oven"] and "river" not in toks  # river: 3 < 4
    assert frequent_ft_tokens(ft, tok, k=10, min_count=4, cache_dir=tmp_path) == toks  # from the cache
    assert any(p.name.startswith("frequent-") for p in tmp_path.iterdir())


def test_organism_of_run_reads_the_manifest():
    m = {"models": {"finetuned": {"spec": "organism:cake_bake", "source": "local:/nonexistent/dir"}}}
    assert organism_of_run(m) == ("cake_bake", None)
    assert organism_of_run({"models": {"finetuned": {"spec": "/some/dir"}}}) == (None, None)


@pytest.fixture
def finished_run(tiny_run):
    """The tiny pair after lens and steering with fake graders."""
    from difflens.adl.steering import SteeringConfig

    pair, layout, c = tiny_run
    graders = Graders(coherence=AllCoherent(), scale=FirstScale(), relevance=None)
    run_lens(pair, layout, graders, LensConfig(positions=[0, 1]), progress=False)
    run_steer(pair, layout, graders, SteeringConfig(positions=[0, 1], search_iters=1, refine_iters=0, search_samples=1,
                                                    min_coherent=1, final_samples=2, max_new_tokens=4,
                                                    prompts=["tell me a story", "why"]), progress=False)
    return pair, layout, c


FT = FtData(name="tiny", texts=["cake bake oven butter sugar flour"] * 12 + ["the cake was red"] * 12,
            description="The model was finetuned on cake baking: cake, oven, butter, sugar, flour.")
QUICK = dict(causal={"n_texts": 4, "max_len": 12, "n_random": 3, "batch_size": 4}, similarity_samples=20)


def test_evaluate_writes_the_documented_summary_and_resumes(finished_run, monkeypatch):
    pair, layout, c = finished_run
    grader = KnownWords(frozenset({"cake", "oven", "butter", "sugar", "flour", "bake"}))
    cfg = EvalConfig(**QUICK)
    loads = []

    def loader():
        loads.append(1)
        return pair

    s = evaluate(layout, FT, relevance_grader=grader, cfg=cfg, pair_loader=loader, progress=False)
    raw = json.loads(layout.evaluation().read_text())
    assert raw["schema_version"] == 1 and raw["frequent_tokens"][:2] == ["cake", "bake"]
    le = raw["results"][c.dataset]["2"]
    assert set(le["relevance"]) == {"delta", "base", "ft", "delta_via_base", "random", "base_via_ft"}
    assert set(le["relevance"]["delta"]) == {"patchscope", "logit_lens"}
    assert set(le["relevance"]["delta"]["patchscope"]) >= {"per_position", "max"}
    assert set(le["steering_similarity"]) == {"steered_vs_ft", "unsteered_vs_ft", "random_vs_ft", "ft_self",
                                              "steered_vs_chat", "unsteered_vs_chat"}
    assert set(le["steering_similarity"]["ft_self"]) >= {"mean", "std"}
    assert set(le["steering_similarity_per_position"]) == {"0", "1"}
    assert len(le["causal"]["delta"]["ft"]) == len(le["causal"]["delta"]["pt"]) == c.delta.shape[0]
    assert set(le["causal"]["random"]["ft"]) >= {"mean", "std"}
    ident = le["identification"]
    assert ident["n_candidates"] >= 6 and 1 <= ident["adl_rank"] <= ident["n_candidates"]
    assert "(true description)" in ident["adl_scores"]  # a description without an organism joins the candidates
    lk = le["leakage"]
    assert lk["ft"]["n"] == 4 and lk["base"]["n"] == 4  # 2 prompts × 2 samples each, base model as the control
    assert 0 <= lk["ft"]["share"] <= 1 and lk["min_words"] == 2
    assert loads == [1]
    # rerun: every part comes from its cache — no grading, no model
    calls = grader.calls
    s2 = evaluate(layout, FT, relevance_grader=grader, cfg=cfg, pair_loader=loader, progress=False)
    assert grader.calls == calls and loads == [1]
    assert s2.model_dump() == s.model_dump()
    # --part picks what is computed; finished parts with unchanged inputs still appear
    s_rel = evaluate(layout, FT, relevance_grader=grader, cfg=EvalConfig(parts=["relevance"], **QUICK),
                     pair_loader=loader, progress=False)
    assert s_rel.layers()[0].causal is not None and s_rel.layers()[0].leakage is not None
    # a changed grader re-grades relevance only
    other = KnownWords(frozenset({"cake"}))
    s3 = evaluate(layout, FT, relevance_grader=other, cfg=cfg, pair_loader=loader, progress=False)
    assert other.calls > 0 and loads == [1]
    assert s3.layers()[0].relevance["delta"]["patchscope"].max <= s.layers()[0].relevance["delta"]["patchscope"].max


def test_parts_that_run_the_pair_are_recomputed_in_another_precision(finished_run, tmp_path):
    """The causal effect and the base model's leakage answers run the pair: evaluated in bfloat16
    after float32 they are computed again (the grading-only parts come from their caches); a loader
    that gives another precision than evaluate was told is refused."""
    from conftest import save_tiny
    from difflens.errors import DifflensError
    from difflens.models.pair import load_pair

    pair, layout, c = finished_run
    grader = KnownWords(frozenset({"cake", "oven", "butter", "sugar", "flour", "bake"}))
    cfg = EvalConfig(**QUICK)
    s32 = evaluate(layout, FT, relevance_grader=grader, cfg=cfg, pair_loader=lambda: pair, progress=False)
    pair16 = load_pair(str(save_tiny(tmp_path, "llama", 0)), str(save_tiny(tmp_path, "llama", 1)), dtype="bfloat16")
    loads, calls = [], grader.calls

    def loader():
        loads.append(1)
        return pair16

    s16 = evaluate(layout, FT, relevance_grader=grader, cfg=cfg, pair_loader=loader, progress=False,
                   precision="bfloat16")
    assert loads == [1]
    le32, le16 = s32.layers()[0], s16.layers()[0]
    assert le16.causal is not None and le16.causal.model_dump() != le32.causal.model_dump()
    assert le16.relevance == le32.relevance  # no model in it: cached
    assert grader.calls > calls  # the leakage part graded the bfloat16 base answers
    again = evaluate(layout, FT, relevance_grader=grader, cfg=cfg, pair_loader=loader, progress=False,
                     precision="bfloat16")
    assert loads == [1] and again.model_dump() == s16.model_dump()
    with pytest.raises(DifflensError, match="loaded in bfloat16.*keys its cached parts to float16"):
        evaluate(layout, FT, relevance_grader=grader, cfg=cfg, pair_loader=loader, progress=False, precision="float16")


def test_missing_inputs_are_skipped_with_reasons(tiny_run):
    pair, layout, c = tiny_run  # collected only: no lens, no steering
    s = evaluate(layout, None, relevance_grader=None, cfg=EvalConfig(**QUICK), pair_loader=lambda: pair,
                 progress=False)
    assert set(s.skipped) == {"relevance", "similarity", "causal", "identification", "leakage", "methods"}
    assert "--ft-data" in s.skipped["causal"]
    s = evaluate(layout, FT, relevance_grader=KnownWords(frozenset()), cfg=EvalConfig(parts=["relevance", "similarity"],
                 **QUICK), pair_loader=lambda: pair, progress=False)
    le = s.layers()[0]
    assert "difflens lens" in le.skipped["relevance"] and "difflens steer" in le.skipped["similarity"]
    assert le.skipped["causal"].startswith("not requested") and le.causal is None


def test_cli_evaluate(finished_run, tmp_path):
    from difflens.cli.main import app

    pair, layout, c = finished_run
    ft = tmp_path / "ft.jsonl"
    ft.write_text("\n".join(json.dumps({"text": t}) for t in FT.texts))
    runner = CliRunner()
    r = runner.invoke(app, ["evaluate", str(layout.root), "--part", "bogus"])
    assert r.exit_code == 2 and "unknown part" in r.output
    r = runner.invoke(app, ["evaluate", str(tmp_path / "nope")])
    assert r.exit_code == 2 and "not a run directory" in " ".join(r.output.split())
    r = runner.invoke(app, ["evaluate", str(layout.root), "--ft-data", str(ft), "--description", FT.description,
                            "--part", "relevance", "--part", "identification"])
    assert r.exit_code == 0, r.output
    assert "token relevance" in r.output and "identification" in r.output and "skipped" in r.output
    assert layout.evaluation().exists()
    r = runner.invoke(app, ["evaluate", str(layout.root), "--part", "causal"])
    assert r.exit_code == 0 and "no finetuning data" in " ".join(r.output.split())
