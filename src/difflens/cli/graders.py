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
