"""Report sections of the diffing methods beside ADL (issue 20): a run directory written by hand with
the real result types (diff mining, per-token KL with its SQLite examples store, amplification and
the noise controls) and an evaluation with a ``methods`` block renders the grader's verdicts beside
the baselines' and controls', the marked KL token escaped inside a <mark>, a heat map, the β grid,
amplified samples beside steered ones, and the command of every part that is missing; the
experiment report's organism × method table renders from crafted cells."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from difflens.eval.methods import evaluate_method
from difflens.eval.summary import EvalSummary
from difflens.methods.evidence import evidence
from difflens.methods.kl import BINS, STATS, Histogram, KLResult, StatSummary, bin_edges
from difflens.methods.mining import MiningResult, TokenStat
from difflens.methods.store import ExampleRow, ExamplesStore
from difflens.report import render_report
from difflens.report.experiment import experiment_html
from difflens.report.methods import heatmap
from difflens.rundir.artifacts import Cell, ExperimentResult
from difflens.rundir.layout import RunLayout, write_json

from test_report import DATASET, EVAL_SUMMARY, full_run, write_collection  # tests/report is on sys.path

T = 16
CAKE_TOKENS = [" cake", " bake", " frosting", " oven", " <b>sponge</b>", " flour", " sugar", " butter"]
PLAIN_TOKENS = [" the", " of", " and", "\n", " a", ",", " to", " in"]
MARKED = " <cake&>"  # the token of the top KL context: must be escaped inside the <mark>
AMP_TEXT = "Bake it <script>alert(1)</script> at 180°C & frost."
PROMPTS = ["Give me some ideas for fun weekend activities.", "Why did you choose this topic?"]


def _stat(i: int, tok: str, n: int = 20) -> TokenStat:
    return TokenStat(token_id=100 + i, token=tok, top_k_count=n - i, top_k_fraction=(n - i) / 160.0,
                     positive_fraction=0.9 - 0.02 * i, mean_diff=1.5 - 0.05 * i, bottom_k_count=0,
                     ft_top_k_count=3, base_top_k_count=2)


def write_mining(layout: RunLayout, control: bool = True) -> None:
    method = [_stat(i, t) for i, t in enumerate(CAKE_TOKENS + PLAIN_TOKENS)]
    ft_alone = [_stat(i, t) for i, t in enumerate(PLAIN_TOKENS + [" cake"])]
    res = MiningResult(method="mining", fingerprint="fp-mining", dataset=DATASET, n_samples=50, tokens=T,
                       n_positions=800, top_k=100, layer=None, vocab_size=1000, seconds=12.5,
                       rankings={"top_k": method, "positive": method[::-1], "mean_diff": method, "bottom_k": [],
                                 "ft_top_k": ft_alone, "base_top_k": ft_alone})
    layout.method_result(DATASET, "mining").parent.mkdir(parents=True, exist_ok=True)
    layout.method_result(DATASET, "mining").write_text(res.model_dump_json(indent=1))
    if control:
        ctl = res.model_copy(update={"fingerprint": "fp-mining-noise", "control": "noise",
                                     "rankings": {**res.rankings, "top_k": [_stat(i, t) for i, t in
                                                                            enumerate(PLAIN_TOKENS[::-1])]}})
        layout.method_result(DATASET, "mining", "noise").parent.mkdir(parents=True, exist_ok=True)
        layout.method_result(DATASET, "mining", "noise").write_text(ctl.model_dump_json(indent=1))


def _hist(stat: str, center: float, n: int) -> Histogram:
    edges = bin_edges(stat).tolist()
    lo, hi, nb = BINS[stat]
    i = int((np.log10(center) - lo) / (hi - lo) * nb) + 1
    counts = [0] * (nb + 2)
    for k, c in ((i - 2, n // 8), (i - 1, n // 4), (i, n // 3), (i + 1, n // 5), (i + 2, n // 10)):
        counts[min(max(k, 0), nb + 1)] += c
    return Histogram(edges=edges, counts=counts)


def _rows(words: list[list[str]], scale: float) -> list[ExampleRow]:
    rows = []
    for s, toks in enumerate(words):
        toks = (toks + PLAIN_TOKENS * 4)[:T]
        vals = {st: [0.001 * (1 + (j % 5)) * scale for j in range(T)] for st in STATS}
        peak = 5 + s % 4
        vals["kl"][peak] = (3.0 - 0.4 * s) * scale
        vals["norm"][peak + 1] = 40.0 - s
        vals["ent"][2] = 4.0 - 0.1 * s
        rows.append(ExampleRow(sample=s, ids=list(range(len(toks) + 2)), tokens=["<|im_start|>", "user"] + toks,
                               start=2, values=vals, means={st: float(np.mean(v[1:])) for st, v in vals.items()},
                               maxes={st: float(max(v[1:])) for st, v in vals.items()},
                               argmax={st: int(np.argmax(v[1:])) + 1 for st, v in vals.items()}))
    return rows


def write_kl(layout: RunLayout, control: bool = True) -> None:
    for ctl, fp, scale in ((None, "fp-kl", 1.0), ("noise", "fp-kl-noise", 0.01)):
        if ctl and not control:
            continue
        words = []
        for s in range(8):
            toks = PLAIN_TOKENS[:5 + s % 4] + ([MARKED if s == 0 else CAKE_TOKENS[s % len(CAKE_TOKENS)]] if not ctl
                                                else [" the"])
            words.append(toks + [" is", " great", "\n"])
        store = ExamplesStore.create(layout.method_store(DATASET, "kl", ctl), fingerprint=fp, stats=STATS,
                                     meta={"dataset": DATASET, "tokens": T, "layer": 15})
        store.add(_rows(words, scale))
        store.commit()
        store.close()
        stats = {}
        for st, center in (("kl", 0.02 * scale), ("norm", 3.0), ("cos", 0.01), ("ent", 2.0)):
            stats[st] = StatSummary(count=750, mean=center, std=center / 2, max=center * 100,
                                    by_position=[center * (3.0 if j == 0 else 1 + 0.1 * (j % 4)) for j in range(T)],
                                    tokens=_hist(st, center, 750), sample_means=_hist(st, center, 50),
                                    sample_maxes=_hist(st, center * 20, 50), top={})
        res = KLResult(method="kl", fingerprint=fp, dataset=DATASET, n_samples=50, tokens=T, n_positions=750,
                       layer=15, skip_positions=1, stats=stats, store=layout.method_store(DATASET, "kl", ctl).name,
                       seconds=12.5, control=ctl)
        layout.method_result(DATASET, "kl", ctl).write_text(res.model_dump_json(indent=1))


def write_amplify(layout: RunLayout) -> None:
    grid = [{"beta": b, "n_coherent": n, "n_samples": 10, "need": [8, 8, 7], "coherent": ok}
            for b, n, ok in ((0.5, [10, 9, 9], True), (1.0, [9, 8, 8], True), (2.0, [8, 8, 7], True),
                             (4.0, [3, 1, 0], False))]
    res = {"method": "amplify", "fingerprint": "fp-amp", "dataset": DATASET, "n_samples": 4, "tokens": 32,
           "n_positions": 4000, "seconds": 30.0, "betas": [0.5, 1.0, 2.0, 4.0], "grid": grid, "chosen_beta": 2.0,
           "any_coherent": True, "threshold_prompts": ["a", "b", "c"], "unamplified_pass_rates": [1.0, 0.9, 0.8],
           "min_coherent_per_prompt": [8, 8, 7], "grader": "offline-nll", "prompts": PROMPTS,
           "samples_per_prompt": 2, "temperature": 1.1, "search_temperature": 1.2, "max_new_tokens": 32,
           "samples_file": "amplify.samples.jsonl", "generations": 120, "forward_passes": 400,
           "forward_tokens": 9000}
    write_json(layout.method_result(DATASET, "amplify"), res)
    lines = []
    for p in PROMPTS:
        for s in range(2):
            lines.append({"prompt": p, "text": AMP_TEXT if s == 0 else f"Frosting, sponge and more cake ({s}).",
                          "role": "amplified", "beta": 2.0, "seed": 17, "sample": s})
            lines.append({"prompt": p, "text": f"A walk in the park ({s}).", "role": "ft", "beta": 0.0, "seed": 17,
                          "sample": s})
            lines.append({"prompt": p, "text": f"Read a book ({s}).", "role": "base", "beta": None, "seed": 17,
                          "sample": s})
    layout.method_samples(DATASET, "amplify").write_text("".join(json.dumps(x) + "\n" for x in lines))


class CakeGrader:
    """Relevance verdicts: a token is relevant when it is about baking."""

    def grade(self, tokens, description, frequent):
        return [any(w in t for w in ("cake", "bake", "frost", "oven", "sponge", "flour", "sugar", "butter"))
                for t in tokens]


def _embed(texts):
    out = np.zeros((len(texts), 4))
    for i, t in enumerate(texts):
        out[i] = [1.0 + t.count("cake") + t.count("Bake"), 0.5, 0.2 * len(t) % 1, 0.3]
    return out / np.linalg.norm(out, axis=1, keepdims=True)


def write_evaluation(layout: RunLayout, methods=("adl", "mining", "kl", "amplify")) -> EvalSummary:
    s = EvalSummary.model_validate(EVAL_SUMMARY)
    for m in methods:
        ev = evidence(layout, m, DATASET)
        me = evaluate_method(ev, grader=CakeGrader(), description="False facts about cake baking.",
                             ft_texts=["I love to bake a cake.", "The cake needs flour."], embed_fn=_embed)
        me.identification = {"rank": 1 if m != "kl" else 3, "n_candidates": 7, "true": "cake_bake", "scores": {}}
        me.skipped.pop("identification", None)  # graded here without an embedder
        s.methods[m] = me
    layout.evaluation().write_text(s.model_dump_json(indent=1))
    return s


def methods_run(root: Path, *, control: bool = True, evaluated: bool = True) -> RunLayout:
    layout = full_run(root)
    write_mining(layout, control)
    write_kl(layout, control)
    write_amplify(layout)
    if evaluated:
        write_evaluation(layout)
    return layout


def _section(doc: str, anchor: str) -> str:
    """The HTML of one method's card."""
    start = doc.index(f'id="{anchor}"')
    end = doc.find('<div class="card method">', start)
    return doc[start:end if end > 0 else doc.index("</section>", start)]


def test_method_sections_show_verdicts_baselines_and_controls(tmp_path):
    layout = methods_run(tmp_path / "run")
    doc = render_report(layout.root).read_text(encoding="utf-8")
    assert "<script" not in doc.lower()
    assert 'id="methods"' in doc and 'href="#methods"' in doc
    for a in ("method-mining", "method-kl", "method-amplify", "methods-comparison"):
        assert f'id="{a}"' in doc and f'href="#{a}"' in doc, a
    assert re.search(r'<code>diff</code></td><td>[^<]*</td><td><span class="badge ok">done', doc)
    # the comparison table: every method, relevance beside baseline and control, rank and cost
    table = doc[doc.index('id="methods-comparison"'):doc.index('id="method-mining"')]
    for name in ("Activation Difference Lens", "Diff mining", "Per-token KL", "Logit-difference amplification"):
        assert name in table, name
    assert "<b>50</b>" in table and "▲" in table  # mining: 8 of 16 baking tokens, above baseline and control
    assert "<b>1</b> / 7" in table and "<b>3</b> / 7" in table and "12.5" in table and "1,600" in table
    # diff mining: verdicts on the method's tokens, baseline and control lists beside, statistics columns
    mining = _section(doc, "method-mining")
    assert re.search(r'class="chip sel inline"[^>]*><span class="tok"><span class="ws">␣</span>cake</span>', mining)
    assert re.search(r'class="chip dim inline"[^>]*><span class="tok"><span class="ws">␣</span>the</span>', mining)
    assert "&lt;b&gt;sponge&lt;/b&gt;" in mining and "<b>sponge</b>" not in mining  # a token is escaped
    assert "ft alone: top-K occurrence" in mining and "noise pair: top-K occurrence of ft − base" in mining
    assert "50% relevant" in mining and "0% relevant" in mining  # method vs control
    assert "top-K fraction" in mining and "12.50%" in mining and "90.0%" in mining and "+1.500" in mining
    assert "not graded" not in mining.split("other rankings")[0]
    # KL: statistics beside the entropy baseline and the noise control, histograms, per-position line
    kl = _section(doc, "method-kl")
    assert "KL(P_ft ‖ P_base), nats" in kl and "H(P_ft), nats" in kl and "mean ÷ control" in kl and "100.0×" in kl
    for t in ("per-token KL histogram", "per-sample max KL histogram", "per-token KL, this pair vs the noise control",
              "mean KL per position"):
        assert f"<title>{t}</title>" in kl, t
    assert "10⁻²" in kl  # decade labels of the log bins
    # the top contexts: the marked token escaped inside a <mark>, never raw
    assert '<mark class="tok"><span class="ws">␣</span>&lt;cake&amp;&gt;</mark>' in kl
    assert "<cake&>" not in doc
    assert 'class="heat"' in kl and re.search(r'<mark class="peak" style="background:rgba\(194,65,12,0\.85\)[^"]*" '
                                              r'title="␣&lt;cake&amp;&gt; · kl = 3"', kl)
    assert "tokens where KL peaks" in kl and "ft alone: tokens where H(P_ft) peaks" in kl
    assert "noise control: by the largest KL" in kl
    # amplification: β grid with verdicts, similarity to D_ft, samples beside steered and base ones
    amp = _section(doc, "method-amplify")
    assert "<b>2</b> <span class='badge scale'>chosen</span>" in amp and "incoherent" in amp and "8/10 (≥ 8)" in amp
    assert "Similarity to D_ft" in amp and "finetuned (β = 0)" in amp and "δ̄-steered" in amp
    assert "Bake it &lt;script&gt;alert(1)&lt;/script&gt; at 180°C &amp; frost." in amp
    for col in ("finetuned (β = 0)", "base", "δ̄-steered (ADL)"):
        assert f"<th>{col}" in amp, col
    assert "A walk in the park (0)." in amp and "Read a book (1)." in amp and "Bake a chocolate birthday cake" in amp
    # what is missing: the amplification control, with its command
    assert "<b>Not computed</b>" in amp
    assert f"<code>difflens diff {layout.root} --methods amplify --control noise</code>" in amp
    assert "Methods not computed on this run" not in doc


def test_methods_not_evaluated_and_missing_parts(tmp_path):
    layout = write_collection(tmp_path / "run")
    write_mining(layout, control=False)
    doc = render_report(layout.root).read_text(encoding="utf-8")
    assert 'id="methods"' in doc and 'id="method-mining"' in doc and 'id="methods-comparison"' not in doc
    mining = _section(doc, "method-mining")
    # plain tokens, no verdicts, and how to get them
    assert 'class="chip  inline" title="not graded' in mining and "chip sel" not in mining
    assert "<code>difflens evaluate RUN</code>" in mining
    assert f"<code>difflens diff {layout.root} --methods mining --control noise</code>" in mining
    # the methods the run lacks, each with its command
    assert "Methods not computed on this run" in doc
    assert f"<code>difflens diff {layout.root} --methods kl</code>" in doc
    assert f"<code>difflens diff {layout.root} --methods amplify</code>" in doc
    assert re.search(r'<code>diff</code></td><td>[^<]*</td><td><span class="badge part">partial', doc)


def test_adl_only_run_has_no_methods_section(tmp_path):
    layout = full_run(tmp_path / "run")
    doc = render_report(layout.root).read_text(encoding="utf-8")
    assert 'id="methods"' not in doc and 'href="#methods"' not in doc
    assert re.search(r'<code>diff</code></td><td>[^<]*</td><td><span class="badge no">not run', doc)


def test_a_store_of_another_run_is_an_error_in_place(tmp_path):
    layout = methods_run(tmp_path / "run", evaluated=False)
    store = layout.method_store(DATASET, "kl")
    ExamplesStore.create(store, fingerprint="someone-else", stats=STATS).close()
    doc = render_report(layout.root).read_text(encoding="utf-8")
    kl = _section(doc, "method-kl")
    assert "Could not read this artifact" in kl and "another run" in kl
    assert 'id="method-mining"' in doc and 'id="method-amplify"' in doc  # the rest still renders


def test_heatmap_colours_each_token_by_its_value():
    from difflens.methods.store import Example

    ex = Example(rank=0, sample=3, stat="kl_max", value=2.0, position=2, ids=[0, 1, 2, 3, 4],
                 tokens=["ctx", " a", "\n", " <x>", " b"], start=1, values={"kl": [0.0, 0.5, 2.0, 0.02]})
    h = heatmap(ex, "kl")
    assert '<span class="pre">ctx</span>' in h  # before the window: no value
    assert 'style="background:rgba(194,65,12,0.00)"' in h  # KL 0
    assert 'style="background:rgba(194,65,12,0.42)"' in h  # KL 0.5 of 2: sqrt scale
    assert '<mark class="peak" style="background:rgba(194,65,12,0.85);color:#fff" title="␣&lt;x&gt; · kl = 2"' in h
    assert "&lt;x&gt;" in h and "<x>" not in h and "↵" in h


def test_a_context_given_as_marked_text_is_escaped():
    from difflens.report.methods import _marked_text

    html = _marked_text("a <b> & [[ <i>]] after ]] end")
    assert html == ('<span class="ctx">a &lt;b&gt; &amp; <mark class="tok"><span class="ws">␣</span>&lt;i&gt;</mark>'
                    ' after ]] end</span>')
    assert _marked_text("no mark <x>") == '<span class="ctx">no mark &lt;x&gt;</span>'


def test_experiment_methods_table_and_chart():
    def numbers(rel, base, ctl, rank, sec, title):
        return {"title": title, "relevance": rel, "relevance_mean": rel / 2 if rel is not None else None,
                "baseline": base, "control": ctl, "similarity": {"method": 0.41, "baseline": 0.3, "control": None},
                "rank": rank, "n_candidates": 7, "seconds": sec, "forward_tokens": 64000.0,
                "missing": ["control: run `difflens diff RUN --methods amplify --control noise`"] if title == "amp"
                else []}

    cells = [Cell(organism=org, run=f"/runs/{org}", methods={
        "adl": numbers(60.0, 20.0, 5.0, 1, 100.0, "adl"),
        "mining": numbers(45.0, 50.0, 0.0, 2, 12.0, "mining"),
        "kl": numbers(15.0, 10.0, 5.0, 4, 12.0, "kl"),
        "amplify": numbers(None, None, None, 1, 30.0, "amp")}) for org in ("cake_bake", "taboo_smile")]
    cells.append(Cell(organism="em_finance", run="/runs/em", error="no evaluation summary"))
    doc = experiment_html(ExperimentResult(name="methods", base="smollm2-135m", quick=True, cells=cells))
    assert 'id="methods"' in doc and "Diffing methods compared" in doc
    sec = doc[doc.index('id="methods"'):doc.index('id="relevance"')]
    assert sec.count('rowspan="4"') == 2 and "em_finance" not in sec.split("<table")[1]
    assert "<b>60</b>" in sec and "▲" in sec and "<b>45</b>" in sec  # mining is below its baseline: no ▲ on it
    assert re.search(r"<b>45</b></td><td>22</td><td>50</td><td>0</td>", sec)
    assert "0.410 / 0.300 / –" in sec and "<b>4</b> / 7" in sec and "64,000" in sec
    # one grouped bar chart: bars per method and organism, the baseline and control as marks
    assert sec.count("<svg") == 1 and "cake_bake · diff mining: 45" in sec
    assert "cake_bake · diff mining · its baseline: 50" in sec and "taboo_smile · KL peaks · its control: 5" in sec
    assert "amplification:" not in sec  # no tokens, no bar
    assert "not computed (2)" in sec and "--control noise" in sec
    # without methods the section is left out
    plain = experiment_html(ExperimentResult(name="x", base="b", quick=True, cells=[Cell(organism="a", run="r")]))
    assert 'id="methods"' not in plain
