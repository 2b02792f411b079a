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


def validation_error(e: Any, flags: dict[str, str] | None = None) -> ConfigError:
    """A pydantic ``ValidationError`` of a config model as one line naming the option that set the
    field (``flags``: field → option where the names differ; default ``--field-name``)."""
    err = e.errors()[0]
    field = ".".join(str(x) for x in err["loc"]) if err["loc"] else e.title
    flag = (flags or {}).get(field) or (f"--{field.replace('_', '-')}" if field.isidentifier() else field)
    msg = str(err["msg"]).removeprefix("Value error, ")
    return ConfigError(f"{flag}: {msg[:1].lower() + msg[1:]} (got {err.get('input')!r}).")


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


# -- the same placement as overrides of a run config (run, demo, sweep, experiment): unset = the config's value
O_DTYPE = typer.Option(None, "--dtype", help="override the config's precision (auto, float32, bfloat16, float16, "
                       "bf16-fp32res, fp16-fp32res)")
O_DEVICE = typer.Option(None, "--device", help="override the config's device for both models")


def placement_overrides(**given: Any) -> dict[str, Any]:
    """The run-config placement fields (``device``, ``dtype``, ``device_map``, ``max_memory``, ``base_device``,
    ``ft_device``) that were given on the command line; the config validates them before any model loads."""
    return {k: v for k, v in given.items() if v is not None}


# -- who samples the steering stage's final generations (steer, run, demo, sweep) --------------------
# (the escaped bracket keeps Rich from reading "[vllm]" as markup in --help)
GEN_BACKEND = typer.Option(None, "--backend", help="who samples the final steered / unsteered generations: hf "
                           "(the run's own pair, the default) or vllm (pip install 'difflens\\[vllm]', GPU); the "
                           "threshold search stays on the HF pair")
TP_SIZE = typer.Option(None, "--tensor-parallel-size", help="--backend vllm: GPUs each vLLM engine is sharded over "
                       "(default 1)")
VLLM_MEM = typer.Option(None, "--vllm-gpu-memory-utilization", help="--backend vllm: share of GPU memory its engine "
                        "may take (default 0.85; leave room for the HF pair on the same GPU)")


def backend_overrides(backend: Optional[str], tensor_parallel_size: Optional[int],
                      gpu_memory_utilization: Optional[float]) -> dict[str, Any]:
    """The run-config fields the generation-backend options set (only those given), checked before any
    model loads: ``--backend vllm`` without vLLM is a ConfigError naming ``pip install 'difflens[vllm]'``."""
    from ..backends import check_backend

    if backend is not None:
        check_backend(backend)
    given = {"generation_backend": backend, "tensor_parallel_size": tensor_parallel_size,
             "vllm_gpu_memory_utilization": gpu_memory_utilization}
    return {k: v for k, v in given.items() if v is not None}


def backend_choice(backend: Optional[str], tensor_parallel_size: Optional[int],
                   gpu_memory_utilization: Optional[float]) -> tuple[str, dict[str, Any]]:
    """The generation backend and its :func:`difflens.backends.backend_for_run` options for a command
    that steers without a run config (``difflens steer``), checked before any model loads."""
    from ..backends import check_backend

    name = check_backend(backend or "hf")
    opts: dict[str, Any] = {}
    if tensor_parallel_size is not None:
        if tensor_parallel_size < 1:
            raise ConfigError(f"--tensor-parallel-size must be ≥ 1, got {tensor_parallel_size}.")
        opts["tensor_parallel_size"] = tensor_parallel_size
    if gpu_memory_utilization is not None:
        if not 0 < gpu_memory_utilization <= 1:
            raise ConfigError(f"--vllm-gpu-memory-utilization must be in (0, 1], got {gpu_memory_utilization}.")
        opts["gpu_memory_utilization"] = gpu_memory_utilization
    if name == "hf" and opts:
        raise ConfigError("--tensor-parallel-size and --vllm-gpu-memory-utilization apply to --backend vllm only.")
    return name, opts


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
