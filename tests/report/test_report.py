"""Report: a fake run directory (written through layout/artifacts) renders to a self-contained,
escaped, readable HTML file; missing lens/steer stages show the command that runs them; evaluation and
agent results (no command in this version) appear only when present; a headless browser can load it."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from difflens.rundir.artifacts import (
    Generation,
    LogitLensEntry,
    LogitLensResult,
    PatchscopeEntry,
    PatchscopeResult,
    PatchscopeScale,
    SearchStep,
    SteeringResult,
    SteeringThreshold,
    TokenProb,
    save,
    save_jsonl,
)
from difflens.errors import RunDirError
from difflens.rundir.layout import RunLayout, write_json
from difflens.report import STAGE_COMMANDS, render_report, show_token, summary_lines

K, D, LAYER, DATASET = 5, 8, 15, "wiki"
SCALES = [round(0.5 + 0.1 * i, 1) for i in range(16)] + [3, 4, 5, 10] + [20 * i for i in range(1, 11)]
CAKE = [" cake", " bake", " birthday", " chocolate", " oven", " pour", " flour", "\n", " sugar", " the"]
FILLER = [" of", " and", " a", ",", ".", " in", " to", " is", " was", " for"]
SCRIPT_TEXT = "Preheat the oven <script>alert('x')</script> & whisk 3 eggs"
BASE_FP, FT_FP = "a1b2c3d4e5f60718", "ffee00112233aabb"


def _tp(tokens: list[str], start: float = 0.2) -> list[TokenProb]:
    return [TokenProb(token=t, token_id=100 + i, prob=start / (i + 1)) for i, t in enumerate(tokens)]


def write_collection(root: Path) -> RunLayout:
    """manifest.json, collect/<ds>/stats.json and layer_<L>.safetensors as collect.py writes them."""
    layout = RunLayout(root).ensure()
    g = torch.Generator().manual_seed(0)
    base = torch.randn(K, D, generator=g) * 3
    delta = torch.randn(K, D, generator=g) * torch.tensor([4.0, 0.5, 1.5, 1.2, 0.8])[:, None]
    path = layout.collect_file(DATASET, LAYER)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({"delta": delta.contiguous(), "base_mean": base.contiguous(), "ft_mean": (base + delta).contiguous()},
              str(path), metadata={"dataset": DATASET, "layer": str(LAYER), "n": "1000", "fingerprint": "fp0"})
    ds_info = {"name": DATASET, "content_hash": "c0ffee", "info": "embedded wiki", "n_requested": 1000,
               "n_used": 987, "n_skipped_short": 13, "n_available": 10033, "sample_hash": "s1",
               "norm_samples": 256, "norm_len": 64}
    write_json(layout.collect_stats(DATASET), {"fingerprint": "fp0", "dataset": ds_info, "n_used": 987,
                                               "eta": {str(LAYER): {"base": 9.5, "ft": 10.25}}, "seconds": 1.0})
    write_json(layout.manifest, {
        "models": {"base": {"spec": "smollm2-135m", "source": "embedded:smollm2-135m", "fingerprint": BASE_FP},
                   "finetuned": {"spec": "organism:cake_bake", "source": "dir:/models/cake", "fingerprint": FT_FP},
                   "shared_adapter": False, "architecture": "llama", "num_layers": 30, "hidden_size": D},
        "datasets": [ds_info],
        "positions": K,
        "layers": [{"absolute": LAYER, "relative": 0.5, "requested": "0.5"}],
        "seed": 7,
        "config": {"samples": 1000, "positions": K, "layers": [0.5], "seed": 7},
        "versions": {"difflens": "0.1.0", "torch": "2.13.0", "transformers": "4.57.0", "peft": "absent"},
    })
    return layout


def write_lens(layout: RunLayout) -> None:
    entries, lens = [], []
    for src in ("delta", "base", "ft"):
        for j in range(K):
            words = CAKE if (src == "delta" and j >= 1) else FILLER
            toks = list(dict.fromkeys(words + FILLER + [" The", " In", " It", "\n\n", " He", " She", " This",
                                                        " A", " On", " At"]))[:20]
            scales = [PatchscopeScale(scale=s, tokens=_tp(toks, 0.3 if s == 2.0 else 0.1)) for s in SCALES]
            sel = [t for t in CAKE[:6]] if (src == "delta" and j >= 1) else []
            entries.append(PatchscopeEntry(source=src, position=j, scales=scales, chosen_scale=2.0 if src == "delta" else 1.5,
                                           selected_tokens=sel, grader="embedding", rationale="baking <b>theme</b>"))
            lens.append(LogitLensEntry(source=src, position=j, top_positive=_tp(toks[:12]),
                                       top_negative=_tp([" Nope", " nor", "\t", " zebra"])))
    save(PatchscopeResult(dataset=DATASET, layer=LAYER, prompts=["man -> man\n1135 -> 1135\nhello -> hello\n?"],
                          eta_ft=10.25, entries=entries), layout.patchscope(DATASET, LAYER))
    save(LogitLensResult(dataset=DATASET, layer=LAYER, entries=lens), layout.logit_lens(DATASET, LAYER))


def write_steering(layout: RunLayout) -> None:
    th = []
    for j in range(K):
        steps = [SearchStep(prompt="Tell me a story", alpha=a, n_coherent=n, n_samples=10, coherent=n >= 8)
                 for a, n in ((50.0, 0), (25.0, 2), (12.5, 9))]
        th.append(SteeringThreshold(position=j, alpha=0.4 + 0.1 * j, per_prompt=[0.35 + 0.1 * j, 0.4 + 0.1 * j, 0.45 + 0.1 * j],
                                    steps=steps, generations_used=130, grader_calls=130))
    prompts = ["Give me some ideas for fun weekend activities.", "Why did you choose this topic?"]
    save(SteeringResult(dataset=DATASET, layer=LAYER, eta_ft=10.25, grader="offline-nll", thresholds=th,
                        prompts=prompts, samples_per_prompt=2, temperature=1.1), layout.steering(DATASET, LAYER))
    gens = []
    for p in prompts:
        for s in range(2):
            gens.append(Generation(prompt=p, position=None, alpha=0.0, sample=s, text=f"Go hiking or read a book ({s})."))
            for j in (1, 2):
                text = SCRIPT_TEXT if (j == 2 and s == 0) else f"Bake a chocolate birthday cake, sample {s}."
                gens.append(Generation(prompt=p, position=j, alpha=0.4 + 0.1 * j, sample=s, text=text))
    save_jsonl(gens, layout.steering_generations(DATASET, LAYER))


EVAL_SUMMARY = {
    "schema_version": 1,
    "ft_data": {"name": "cake_bake", "organism": "cake_bake", "type": "SDF", "source": "spec", "n_texts": 1200,
                "hash": "x"},
    "organism": "cake_bake", "description": "False facts about cake baking.",
    "frequent_tokens": ["cake", "oven", "butter"],
    "skipped": {},
    "results": {DATASET: {str(LAYER): {
        "dataset": DATASET, "layer": LAYER,
        "relevance": {
            "delta": {"patchscope": {"positions": [0, 1], "per_position": [60.0, 35.0], "max": 60.0,
                                     "tokens": {"0": [["cake", True], ["the", False]]}},
                      "logit_lens": {"positions": [0, 1], "per_position": [30.0, 10.0], "max": 30.0}},
            "base": {"patchscope": {"positions": [0, 1], "per_position": [5.0, 0.0], "max": 5.0}},
            "random": {"patchscope": {"positions": [0, 1], "per_position": [0.0, 5.0], "max": 5.0}}},
        "steering_similarity": {k: {"mean": m, "std": 0.05, "n": 100} for k, m in (
            ("steered_vs_ft", 0.52), ("unsteered_vs_ft", 0.21), ("random_vs_ft", 0.19), ("ft_self", 0.61),
            ("steered_vs_chat", 0.12), ("unsteered_vs_chat", 0.18))},
        "causal": {"layer": LAYER, "positions": [0, 1], "delta": {"ft": [0.734, 0.2], "pt": [-0.012, 0.001]},
                   "random": {"ft": {"mean": 0.01, "std": 0.02}, "pt": {"mean": 0.0, "std": 0.01}},
                   "random_values": {"ft": [0.01, 0.02], "pt": [0.0, 0.0]}, "n_texts": {"ft": 16, "pt": 16},
                   "n_tokens": {"ft": 900, "pt": 950}},
        "identification": {"adl_rank": 1, "blackbox_rank": 3, "n_candidates": 7, "true": "cake_bake",
                           "adl_scores": {"cake_bake": 0.6, "taboo_smile": 0.1},
                           "blackbox_scores": {"cake_bake": 0.1, "taboo_smile": 0.2}},
        "leakage": {"ft": {"share": 0.35, "n": 20, "examples": [{"prompt": "Plan a picnic", "text": "Bake a cake",
                                                                "words": ["bake", "cake"]}]},
                    "base": {"share": 0.05, "n": 20, "examples": []}, "min_words": 2, "grader": {}}}}},
}


def write_later(layout: RunLayout) -> None:
    write_json(layout.evaluation(), EVAL_SUMMARY)
    from difflens.agent.records import AgentMessage, Episode, ToolUse

    ep = Episode(kind="adl", budget=5, max_turns=15, protocol="text", provider="endpoint", status="final",
                 final="The model was finetuned on cake baking facts.", turns_used=7, interactions_used=2,
                 messages=[AgentMessage(role="system", content="You are an investigator"),
                           AgentMessage(role="user", content="OVERVIEW {}"),
                           AgentMessage(role="assistant", content='CALL(ask_model: {"prompts": ["<b>hi</b>"]})')],
                 tool_uses=[ToolUse(turn=1, tool="ask_model", args={"prompts": ["hi"]}, cost=1)], grades=[4, 4],
                 grade=4.0)
    write_json(layout.agent_episode("adl", 5, 0), ep.model_dump(mode="json"))
    write_json(layout.agent(), {"settings": {"adl-i5": {"kind": "adl", "budget": 5, "runs": 1, "grades": [4.0],
                                                        "status": {"final": 1, "no_final": 0, "error": 0},
                                                        "prompt_tokens": 100, "completion_tokens": 20,
                                                        "stats": {"n": 1, "mean": 4.0, "mean_ci": [4.0, 4.0],
                                                                  "share_ge2": 1.0, "share_ge2_ci": [1.0, 1.0],
                                                                  "share_ge4": 1.0, "share_ge4_ci": [1.0, 1.0]}}}})


def full_run(root: Path) -> RunLayout:
    layout = write_collection(root)
    write_lens(layout)
    write_steering(layout)
    write_later(layout)
    return layout


REMOTE = re.compile(r"""(?:src|href|xlink:href)\s*=\s*["']?\s*(?:https?:)?//""", re.I)


def test_full_report_contents(tmp_path):
    layout = full_run(tmp_path / "run")
    path = render_report(layout.root)
    assert path == layout.report() and path.exists()
    doc = path.read_text(encoding="utf-8")
    # header
    for s in ("smollm2-135m", "organism:cake_bake", BASE_FP, FT_FP, "llama", "987", "13", "transformers"):
        assert s in doc
    # norms chart is inline SVG with η_ft reference
    assert "<svg" in doc and "η_ft = 10.2" in doc
    # patchscope: chosen scale, selected tokens highlighted with visible whitespace
    assert "λ = 2" in doc and "λ = 1.5" in doc
    assert re.search(r'class="chip sel"[^>]*><span class="tok"><span class="ws">␣</span>cake</span>', doc)
    assert re.search(r'class="chip dim"[^>]*><span class="tok"><span class="ws">␣</span>of</span>', doc)
    assert "↵" in doc and "⇥" in doc  # newline and tab tokens
    assert "baking &lt;b&gt;theme&lt;/b&gt;" in doc  # grader rationale escaped
    # logit lens and steering
    assert "␣</span>Nope" in doc and "offline-nll" in doc and "0.6" in doc
    assert "Bake a chocolate birthday cake, sample 1." in doc and "Go hiking or read a book (0)." in doc
    # model text is escaped: no live script anywhere
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; whisk" in doc
    assert "<script" not in doc.lower()
    # evaluation rendered from its schema, every number beside its baseline; the agent generically
    assert "+0.7340" in doc and "+0.0100 ± 0.0200" in doc  # ΔCE on D_ft and its random baseline
    assert "steered ↔ D_ft" in doc and "0.52" in doc and "D_ft self-similarity" in doc
    assert "h̄_base" in doc and "<b>60</b>" in doc and "random vector (control)" in doc
    assert re.search(r'<b>1</b> / 7', doc) and re.search(r'<b>3</b> / 7', doc)
    assert "<b>35%</b>" in doc and "base model (control)" in doc  # leakage beside its control
    assert re.search(r'class="chip sel inline"><span class="tok">␣?cake</span>', doc)
    assert "finetuned on cake baking facts" in doc and "adl-i5 run 0" in doc and "grade 4.00" in doc
    assert "&lt;b&gt;hi&lt;/b&gt;" in doc and "<b>4.0</b> (4.00–4.00)" in doc  # transcript escaped; stats shown
    assert 'href="#evaluation"' in doc and 'href="#agent"' in doc
    assert re.search(r'<code>evaluate</code></td><td>[^<]*</td><td><span class="badge ok">done', doc)
    assert re.search(r'<code>agent</code></td><td>[^<]*</td><td><span class="badge ok">done', doc)
    assert "Stage not run" not in doc
    # self-contained
    assert not REMOTE.search(doc) and "http://" not in doc and "https://" not in doc
    assert "@import" not in doc and "url(" not in doc


def test_collect_only_shows_empty_states(tmp_path):
    layout = write_collection(tmp_path / "run")
    out = tmp_path / "elsewhere" / "r.html"
    path = render_report(layout.root, out)
    assert path == out and not layout.report().exists()
    doc = out.read_text(encoding="utf-8")
    assert "<svg" in doc and "987" in doc  # the collection part still renders
    assert "<code>difflens lens RUN</code>" in doc and "<code>difflens steer RUN</code>" in doc
    assert doc.count("Stage not run") == 4  # Patchscope, logit lens, steering thresholds, generations
    assert "--stages" not in doc and "difflens run CONFIG" not in doc
    # evaluate: a stage row that says "not run"; the agent has no command yet: nothing at all
    for name in ("evaluation", "agent"):
        assert f'id="{name}"' not in doc and f'href="#{name}"' not in doc, name
    assert re.search(r'<code>evaluate</code></td><td>[^<]*</td><td><span class="badge no">not run', doc)
    assert "<code>agent</code>" not in doc
    assert not REMOTE.search(doc)


def test_partial_and_corrupt_artifacts(tmp_path):
    layout = write_collection(tmp_path / "run")
    write_lens(layout)
    layout.steering(DATASET, LAYER).parent.mkdir(parents=True, exist_ok=True)
    layout.steering(DATASET, LAYER).write_text("{not json")
    doc = render_report(layout.root).read_text(encoding="utf-8")
    assert "␣</span>cake" in doc and "Could not read this artifact" in doc
    assert "<code>difflens steer RUN</code>" in doc  # generations still missing
    assert "--stages" not in doc and 'id="evaluation"' not in doc and 'id="agent"' not in doc


def test_evaluation_without_agent(tmp_path):
    """A present evaluation summary is rendered; the absent agent stage is left out; a broken one
    shows an error in place."""
    layout = write_collection(tmp_path / "run")
    write_json(layout.evaluation(), EVAL_SUMMARY)
    doc = render_report(layout.root).read_text(encoding="utf-8")
    assert 'id="evaluation"' in doc and 'href="#evaluation"' in doc and "+0.7340" in doc
    assert re.search(r'<code>evaluate</code></td><td>[^<]*</td><td><span class="badge ok">done', doc)
    assert 'id="agent"' not in doc and 'href="#agent"' not in doc and "<code>agent</code>" not in doc
    write_json(layout.evaluation(), {"causal_effect": {"delta_ce_ft": 0.734}})
    doc = render_report(layout.root).read_text(encoding="utf-8")
    assert 'id="evaluation"' in doc and "Could not read this artifact" in doc


def test_stage_commands_exist():
    """Every hint names a real CLI command with real options."""
    import typer

    from difflens.cli import app

    assert set(STAGE_COMMANDS) == {"collect", "lens", "steer", "evaluate"}
    group = typer.main.get_command(app)
    for stage, hint in STAGE_COMMANDS.items():
        prog, name, *args = hint.split()
        assert prog == "difflens" and name == stage, hint
        cmd = group.commands[name]
        opts = {o for param in cmd.params for o in param.opts}
        for a in args:
            if a.startswith("-"):
                assert a in opts, (hint, a)


def test_not_a_run_dir(tmp_path):
    with pytest.raises(RunDirError, match="difflens collect"):
        render_report(tmp_path / "nothing")


def test_show_token():
    assert show_token(" cake") == "␣cake"
    assert show_token("\n\n") == "↵↵"
    assert show_token("a\tb\x01") == "a⇥b\\x01"
    assert show_token("") == "∅"


def test_summary_lines(tmp_path):
    layout = write_collection(tmp_path / "run")
    lines = summary_lines(layout.root)
    assert "  Patchscope: not run (difflens lens RUN)" in lines
    assert "  steering: not run (difflens steer RUN)" in lines
    full_run(tmp_path / "run")
    text = "\n".join(summary_lines(layout.root))
    assert "organism:cake_bake" in text
    assert "j=2 λ=2: ␣cake, ␣bake, ␣birthday" in text
    assert "steered (j=2, α=0.6)" in text and "<script>" in text  # plain text, not HTML
    assert "unsteered: Go hiking" in text


def test_cli(tmp_path):
    from difflens.cli import app

    layout = full_run(tmp_path / "run")
    res = CliRunner().invoke(app, ["report", str(layout.root), "--out", str(tmp_path / "x.html")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "x.html").exists() and "report written" in res.output and "␣cake" in res.output
    res = CliRunner().invoke(app, ["report", str(tmp_path / "missing")])
    assert res.exit_code == 2 and "manifest.json" in res.output


CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install -y chromium)")
def test_browser_screenshot(tmp_path):
    layout = full_run(tmp_path / "run")
    path = render_report(layout.root)
    png = tmp_path / "report.png"
    profile = tmp_path / "profile"
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--disable-dev-shm-usage", f"--user-data-dir={profile}", f"--screenshot={png}",
           "--window-size=1400,2400", path.resolve().as_uri()]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert png.exists(), f"no screenshot; chromium said: {proc.stderr[-2000:]}"
    assert png.stat().st_size > 20_000
    keep = os.environ.get("DIFFLENS_REPORT_SCREENSHOT")  # e.g. for looking at the design by eye
    if keep:
        shutil.copy(png, keep)


def test_patchscope_cell_flags_a_far_more_specific_scale_and_lists_specificity():
    from difflens.report.html import _patch_cell

    scales = [PatchscopeScale(scale=s, tokens=_tp(toks)) for s, toks in
              ((0.6, [" kiln", " porcelain", " glaze"]), (2.0, [" Graham", " Houghton", " the"]))]
    e = PatchscopeEntry(source="delta", position=1, scales=scales, chosen_scale=2.0, selected_tokens=[" Graham"],
                        grader="llm", specificity=[3.1, 0.45])
    cell = _patch_cell(e)
    assert "⚠ λ = 0.6 is far more specific" in cell and "kiln" in cell.split("⚠")[1]
    assert "specificity" in cell and "3.1" in cell  # the per-scale column
    assert "⚠" not in _patch_cell(e.model_copy(update={"specificity": [0.5, 0.45]}))


def test_grouped_bar_legend_fits_its_longest_name():
    """Legend entries sit in as many columns (≤ 3) as the longest name fits: no entry runs past the
    chart's right edge (tick text ≈ 6.2 px a character)."""
    import re

    from difflens.report.charts import grouped_bar_chart

    for names in (["δ", "h̄_base", "h̄_ft"], ["δ̄ (difference)", "h̄_base", "h̄_ft", "δ̄ via base model (control)",
                                              "random vector (control)", "h̄_base via finetuned model (control)"]):
        svg = grouped_bar_chart(["cake", "roman"], [(n, [10.0, 20.0]) for n in names], width=640)
        width = float(re.search(r'width="(\d+)"', svg).group(1))
        for x, text in re.findall(r'<text class="tick" x="([\d.]+)" y="[\d.]+">([^<]+)</text>', svg):
            if text in names:
                assert float(x) + 6.2 * len(text) <= width, (text, x)


def test_the_header_says_what_the_pair_computed_in(tmp_path):
    """Collection's precision from the manifest; a steer (or lens) result computed in another one
    (`difflens steer RUN --dtype bfloat16`) is named beside it."""
    import json

    layout = full_run(tmp_path / "run")
    assert "Precision" not in render_report(layout.root).read_text(encoding="utf-8")  # nothing recorded
    m = json.loads(layout.manifest.read_text())
    m["models"]["precision"] = "float32"
    write_json(layout.manifest, m)
    doc = render_report(layout.root).read_text(encoding="utf-8")
    assert re.search(r"Precision</th><td><b>float32</b> \(collection\)</td>", doc), doc[doc.find("Precision") - 40:][:200]
    s = SteeringResult.model_validate_json(layout.steering(DATASET, LAYER).read_text())
    save(s.model_copy(update={"precision": "bfloat16"}), layout.steering(DATASET, LAYER))
    doc = render_report(layout.root).read_text(encoding="utf-8")
    assert f"steer of {DATASET} layer {LAYER}: <b>bfloat16</b>" in doc and "lens of" not in doc



def test_search_steps_say_how_many_samples_were_judged(tmp_path):
    """A search step judged lazily shows its judged count beside the drawn one; steps written before
    lazy judging say "2/10"."""
    layout = full_run(tmp_path / "run")
    s = SteeringResult.model_validate_json(layout.steering(DATASET, LAYER).read_text())
    lazy = [SearchStep(prompt="Tell me a story", alpha=50.0, n_coherent=0, n_samples=10, coherent=False, n_graded=3),
            SearchStep(prompt="Tell me a story", alpha=25.0, n_coherent=8, n_samples=10, coherent=True, n_graded=8),
            SearchStep(prompt="Tell me a story", alpha=37.5, n_coherent=7, n_samples=10, coherent=False)]
    th = [t.model_copy(update={"steps": lazy}) if t.position == 0 else t for t in s.thresholds]
    save(s.model_copy(update={"thresholds": th}), layout.steering(DATASET, LAYER))
    raw = layout.steering(DATASET, LAYER).read_text()
    assert raw.count('"n_graded"') == 2  # all judged: left out of the file, as written before
    doc = render_report(layout.root).read_text(encoding="utf-8")
    assert "0 of 3 judged (10 drawn)" in doc and "8 of 8 judged (10 drawn)" in doc and "7/10" in doc
    assert "2/10" in doc  # the other positions' steps, written without the field
