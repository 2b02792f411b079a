"""Shared pieces of the command-line interfaces: console, error exit, LLM endpoint options."""
from __future__ import annotations

from typing import Any, Optional

import typer
from rich.console import Console

from ..errors import ConfigError

console = Console()

DEFAULT_LLM_URL = "https://openrouter.ai/api/v1"
DEFAULT_KEY_ENV = "OPENROUTER_API_KEY"

GRADER = typer.Option("offline", "--grader", help="offline (no API) or llm (OpenAI-compatible endpoint)")
LLM_MODEL = typer.Option(None, "--llm-model", help="model name at the endpoint, e.g. openai/gpt-5-mini")
LLM_URL = typer.Option(DEFAULT_LLM_URL, "--llm-base-url")
LLM_KEY = typer.Option(DEFAULT_KEY_ENV, "--llm-key-env", help="NAME of the env var holding the API key")


def fail(e: Exception) -> None:
    """Print a difflens error the way every command does and exit with status 2."""
    console.print(f"[bold red]error:[/] {e}")
    raise typer.Exit(2)


def llm_client(model: Optional[str], base_url: str, key_env: str, *, needed_by: str) -> Any:
    """The LLM client the ``--llm-*`` options describe; ``needed_by`` names the option that needs it."""
    if not model:
        raise ConfigError(f"{needed_by} needs --llm-model (and --llm-base-url / --llm-key-env).")
    from ..llm import client_for

    return client_for(model, base_url, key_env)
