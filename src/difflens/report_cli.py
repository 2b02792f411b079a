"""``difflens report RUN``: write the self-contained HTML report of a run directory.

The lead registers :func:`report` on the main Typer app (``app.command("report")(report)``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from .errors import DifflensError

console = Console()


def report(
    run: Path = typer.Argument(..., help="run directory (contains manifest.json)"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="output HTML file (default: RUN/report.html)"),
    open_browser: bool = typer.Option(False, "--open", help="open the report in a web browser"),
) -> None:
    """Write one self-contained HTML report (tokens, charts, steered samples) for a run."""
    from .report import render_report, summary_lines

    try:
        path = render_report(run, out)
        lines = summary_lines(run)
    except DifflensError as e:
        console.print(f"[bold red]error:[/] {e}")
        raise typer.Exit(2)
    for line in lines:
        console.print(line, markup=False, highlight=False)
    console.print(f"[green]✓[/] report written to {path}")
    if open_browser:
        import webbrowser

        if not webbrowser.open(path.resolve().as_uri()):
            console.print(f"could not open a browser; open {path.resolve().as_uri()} yourself")
