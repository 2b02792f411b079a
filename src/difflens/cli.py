"""The ``difflens`` command line (Typer)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from .errors import DifflensError

app = typer.Typer(help="difflens: read finetuning objectives out of base-vs-finetuned activation differences.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
console = Console()


def _fail(e: Exception) -> None:
    console.print(f"[bold red]error:[/] {e}")
    raise typer.Exit(2)


def _parse_layers(values: list[str]) -> list[float | int]:
    out: list[float | int] = []
    for v in values:
        for part in v.split(","):
            part = part.strip()
            if not part:
                continue
            try:
                out.append(float(part) if "." in part else int(part))
            except ValueError:
                raise typer.BadParameter(f"layer '{part}' is neither an index nor a relative depth like 0.5")
    return out


@app.command()
def models() -> None:
    """List embedded, cached and trained models."""
    from .models import list_models

    table = Table("name", "kind", "status", "description")
    for row in list_models():
        table.add_row(row["name"], row["kind"], row["status"], row["description"])
    console.print(table)


@app.command()
def collect(
    base: str = typer.Option(..., "--base", help="base model: embedded name, local dir, .gguf, hub id"),
    finetuned: str = typer.Option(..., "--finetuned", help="finetuned model, LoRA adapter dir or organism:NAME"),
    dataset: list[str] = typer.Option(["wiki"], "--dataset", help="wiki, chat, a local file, or hf:NAME"),
    samples: int = typer.Option(10_000, "--samples", help="N samples per dataset"),
    positions: int = typer.Option(5, "--positions", help="k: first k token positions"),
    layers: list[str] = typer.Option(["0.5"], "--layers", help="absolute index or relative depth (0.5)"),
    out: Path = typer.Option(..., "--out", help="run directory"),
    batch_size: int = typer.Option(64, "--batch-size"),
    seed: int = typer.Option(0, "--seed"),
    text_field: str = typer.Option("text", "--text-field", help="column of local/hub datasets"),
    device: str = typer.Option("cpu", "--device"),
    dtype: str = typer.Option("float32", "--dtype", help="float32, bfloat16 or float16"),
) -> None:
    """Collect mean activation differences δ̄ of the first k tokens."""
    import torch

    from .collect import CollectConfig, collect as run_collect
    from .layout import RunLayout
    from .pair import load_pair

    try:
        cfg = CollectConfig(datasets=dataset, samples=samples, positions=positions, layers=_parse_layers(layers),
                            seed=seed, batch_size=batch_size, text_field=text_field)
        from .corpora import load_corpus

        for d in cfg.datasets:  # fail on bad data before loading any model
            load_corpus(d, text_field=text_field)
        pair = load_pair(base, finetuned, dtype=getattr(torch, dtype), device=device)
        res = run_collect(pair, RunLayout(out), cfg)
    except DifflensError as e:
        _fail(e)
        return
    for ds, items in res.items():
        for c in items:
            norms = c.delta.norm(dim=-1).tolist()
            console.print(f"[green]✓[/] {ds} layer {c.layer}: N={c.n}, η_base={c.eta_base:.2f}, "
                          f"η_ft={c.eta_ft:.2f}, ‖δ̄_j‖={', '.join(f'{x:.2f}' for x in norms)}")
    console.print(f"run directory: {out}")


def main() -> None:  # pragma: no cover
    app()
