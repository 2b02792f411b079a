"""Shared pieces of the command-line interfaces."""
from __future__ import annotations

import typer
from rich.console import Console

console = Console()


def fail(e: Exception) -> None:
    """Print a difflens error the way every command does and exit with status 2."""
    console.print(f"[bold red]error:[/] {e}")
    raise typer.Exit(2)
