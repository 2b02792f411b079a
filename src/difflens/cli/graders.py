"""``difflens graders ...``: measure graders against labelled cases (paper App. D in one command)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from ..errors import ConfigError, DifflensError
from .options import LLM_KEY, LLM_MODEL, LLM_URL, console, fail as _fail, llm_client

graders_app = typer.Typer(help="Graders: check them against labelled cases.", no_args_is_help=True,
                          pretty_exceptions_enable=False)


def _fmt(x: Optional[float]) -> str:
    return "n/a" if x is None else f"{x:.3f}"


@graders_app.command("check")
def check_cmd(
    kind: str = typer.Argument(..., help="coherence, scale, relevance or leakage"),
    labels: Path = typer.Argument(..., help="JSONL of labelled cases (format: see `difflens.graders.check`)"),
    grader: str = typer.Option("offline", "--grader", help="offline (no API) or llm (OpenAI-compatible endpoint)"),
    llm_model: Optional[str] = LLM_MODEL, llm_base_url: str = LLM_URL, llm_key_env: str = LLM_KEY,
    model: str = typer.Option("smollm2-135m-instruct", "--model",
                              help="reference model of the offline coherence grader"),
    embedder: Optional[str] = typer.Option(None, "--embedder", help="sentence-transformers model (offline scale/relevance)"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object: kind, grader, accuracy, precision, "
                                 "recall, f1, n"),
    mistakes: bool = typer.Option(False, "--mistakes", help="also list the cases the grader got wrong"),
) -> None:
    """Run a grader over labelled cases; print accuracy, precision, recall, F1 and n."""
    from ..graders.check import KINDS, load_cases, offline_grader, run_check

    try:
        if kind not in KINDS:
            raise ConfigError(f"unknown grader kind {kind!r}: use one of {', '.join(KINDS)}.")
        if grader not in ("offline", "llm"):
            raise ConfigError(f"--grader must be offline or llm, got {grader!r}.")
        cases = load_cases(kind, labels)  # bad labels fail before any model or endpoint is touched
        if grader == "llm":
            from ..graders import make_graders

            client = llm_client(llm_model, llm_base_url, llm_key_env, needed_by="--grader llm")
            if kind == "leakage":
                from ..graders.leakage import LeakageGrader

                g = LeakageGrader(make_graders("llm", client=client).relevance)
            else:
                g = getattr(make_graders("llm", client=client), kind)
        else:
            g = offline_grader(kind, model=model, embedder=embedder)
        res = run_check(kind, g, cases)
    except DifflensError as e:
        _fail(e)
        return
    if as_json:
        typer.echo(json.dumps(res.summary()))
    else:
        what = {"coherence": "texts", "relevance": "tokens", "scale": "cases", "leakage": "texts"}[kind]
        console.print(f"[bold]{kind}[/] grader [bold]{res.grader}[/] on {labels}: n={res.n} {what}")
        console.print(f"  accuracy {_fmt(res.accuracy)}  precision {_fmt(res.precision)}  "
                      f"recall {_fmt(res.recall)}  F1 {_fmt(res.f1)}"
                      + ("  (precision/recall/F1 of the selected tokens)" if kind == "scale" else ""))
    if mistakes:
        for d in res.mistakes():
            console.print(f"  ✗ {json.dumps(d, ensure_ascii=False)[:300]}", markup=False, highlight=False)


@graders_app.command("readout")
def readout_cmd(
    runs: list[Path] = typer.Argument(..., help="run directories with a finished lens stage (organism runs)"),
    labels: Path = typer.Option(Path("tests/data/labels/domain_words.json"), "--labels",
                                help="hand-labelled domain words per organism (JSON)"),
    embedder: Optional[str] = typer.Option(None, "--embedder", help="sentence-transformers model (offline graders)"),
    as_json: Optional[Path] = typer.Option(None, "--json", help="also write every row and the summary to this file"),
) -> None:
    """Does the first readout show the organism? δ̄'s Patchscope selection, re-graded offline by the
    coherence grader (before) and the specificity grader (after), against labelled domain words:
    per organism and position, and pooled per set (design vs held-out)."""
    from ..eval.readout import find_patchscope, load_domain_labels, readout_rows, rows_json, summarize
    from ..graders.scale import OfflineScaleGrader, SpecificScaleGrader
    from ..models.embedder import DEFAULT_EMBEDDER
    from ..rundir.artifacts import PatchscopeResult, load

    try:
        lab = load_domain_labels(labels)
        jobs = []
        for run in runs:
            cfg_path = run / "run_config.json"
            organism = json.loads(cfg_path.read_text()).get("organism") if cfg_path.is_file() else None
            if not organism or organism not in lab:
                raise ConfigError(f"{run}: its organism ({organism or 'none recorded'}) has no labels in {labels}.")
            jobs.append((organism, find_patchscope(run)))
        emb = embedder or DEFAULT_EMBEDDER
        graders = {"coherence": OfflineScaleGrader(emb), "specificity": SpecificScaleGrader(emb)}
        rows = []
        for organism, path in jobs:
            rows += readout_rows(organism, lab[organism], load(PatchscopeResult, path), graders)
    except DifflensError as e:
        _fail(e)
        return
    from rich.table import Table

    table = Table(title="δ̄ Patchscope readout vs labelled domain words (top-20 lists)")
    for col in ("organism", "set", "j", "best", "grader", "λ", "domain in λ's list", "selected (domain/all)", "selected"):
        table.add_column(col)
    for r in rows:
        table.add_row(r.organism, r.set, str(r.position), str(r.best), r.grader, f"{r.chosen_scale:g}",
                      str(r.chosen), f"{r.tp}/{r.n_selected}", " ".join(t.strip() for t in r.selected)[:60])
    console.print(table)
    summary = summarize(rows)
    for d in sorted(summary.values(), key=lambda d: (d["set"], d["grader"])):
        console.print(f"{d['set']:9} {d['grader']:12} hit {_fmt(d['hit_rate'])} ({d['hits']}/{d['with_domain']})  "
                      f"recall {_fmt(d['recall'])} ({d['tp']}/{d['best']})  "
                      f"precision {_fmt(d['precision'])} ({d['tp']}/{d['selected']})", markup=False)
    if as_json:
        as_json.write_text(json.dumps({"rows": rows_json(rows), "summary": summary}, indent=1))
