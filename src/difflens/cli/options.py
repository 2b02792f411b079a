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
    """Print a difflens error the way every command does and exit with status 2 (the message is
    printed verbatim: ``pip install 'difflens[vllm]'`` is not Rich markup)."""
    from rich.markup import escape

    console.print(f"[bold red]error:[/] {escape(str(e))}")
    raise typer.Exit(2)


def llm_client(model: Optional[str], base_url: str, key_env: str, *, needed_by: str) -> Any:
    """The LLM client the ``--llm-*`` options describe; ``needed_by`` names the option that needs it."""
    if not model:
        raise ConfigError(f"{needed_by} needs --llm-model (and --llm-base-url / --llm-key-env).")
    from ..llm import client_for

    return client_for(model, base_url, key_env)


# -- where and in which precision a model pair is loaded (every command that loads one) ------------
DTYPE = typer.Option("auto", "--dtype", help="auto (float32 on CPU and where it fits; bf16 weights with a float32 "
                     "residual stream above that), float32, bfloat16, float16, bf16-fp32res or fp16-fp32res")
DEVICE = typer.Option("cpu", "--device", help="device for both models: cpu, cuda, cuda:1, mps")
DEVICE_MAP = typer.Option(None, "--device-map", help="shard both models with accelerate: auto, balanced, "
                          "balanced_low_0, sequential or a JSON file of module name → device")
MAX_MEMORY = typer.Option(None, "--max-memory", help="per-device caps for --device-map, e.g. '0=20GiB,1=20GiB,cpu=60GiB'")
BASE_DEVICE = typer.Option(None, "--base-device", help="the base model's placement only: a device (cuda:0) or a "
                           "device map (auto, balanced, FILE.json); overrides --device/--device-map")
FT_DEVICE = typer.Option(None, "--ft-device", help="the finetuned model's placement only (like --base-device)")


def pair_loading(*, dtype: str, device: str, device_map: Optional[str], max_memory: Optional[str],
                 base_device: Optional[str], ft_device: Optional[str]) -> dict[str, Any]:
    """The keyword arguments of :func:`difflens.models.pair.load_pair` for the placement options,
    validated (device-map file read, sizes parsed) before any model is loaded."""
    from ..models.placement import make_placement
    from ..models.precision import check_precision

    check_precision(dtype)
    placement = make_placement(device=device, device_map=device_map, max_memory=max_memory,
                               base_device=base_device, ft_device=ft_device)
    return {"dtype": dtype, "placement": placement}
