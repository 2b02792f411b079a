"""``difflens agent RUN``: the interpretability agent (with one diffing method's evidence, all of them,
or blackbox) with budgets and grading."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from ..errors import ConfigError, DifflensError
from .options import (BASE_DEVICE, DEFAULT_KEY_ENV, DEFAULT_LLM_URL, DEVICE, DEVICE_MAP, DTYPE, FT_DEVICE, LLM_KEY,
                      LLM_MODEL, LLM_URL, MAX_MEMORY, TP_SIZE, VLLM_MEM, backend_choice, console, fail, llm_client,
                      pair_loading)


def agent_cmd(
    run: Path = typer.Argument(..., help="run directory (after lens and steer for the ADL agent)"),
    budget: int = typer.Option(5, "--budget", help="model interactions (ask_model: 1 per prompt; "
                               "generate_steered: 1 per sample)"),
    runs: int = typer.Option(5, "--runs", help="episodes of this setting (each graded)"),
    blackbox: bool = typer.Option(False, "--blackbox", help="the blackbox baseline: only ask_model and the "
                                  "unsteered generations"),
    method: str = typer.Option("adl", "--method", help="the diffing method whose results the agent starts from: "
                               "adl, mining, kl, amplify, or all (every method this run has)"),
    organism: Optional[str] = typer.Option(None, "--organism", help="organism NAME or SPEC.yaml: the truth the "
                                           "hypothesis is graded against (default: the run's organism)"),
    description: Optional[str] = typer.Option(None, "--description", help="the true objective (any pair)"),
    organism_type: str = typer.Option("SDF", "--type", help="rubric for --description: SDF, EM, Subliminal, "
                                      "Taboo or Domain"),
    provider: str = typer.Option("endpoint", "--agent-provider", help="endpoint (OpenAI-compatible), local "
                                 "(a transformers chat model in-process) or manual (you, in this terminal)"),
    agent_model: Optional[str] = typer.Option(None, "--agent-model", help="agent model at the endpoint "
                                              "(default: --llm-model), or the local model for --agent-provider local"),
    agent_base_url: Optional[str] = typer.Option(None, "--agent-base-url", help="default: --llm-base-url"),
    agent_key_env: Optional[str] = typer.Option(None, "--agent-key-env", help="default: --llm-key-env"),
    protocol: str = typer.Option("auto", "--protocol", help="auto (native tool calls where supported), "
                                 "native or text (CALL/FINAL lines)"),
    max_turns: int = typer.Option(15, "--max-turns"),
    agent_max_tokens: int = typer.Option(1500, "--agent-max-tokens", help="longest agent reply (tokens)"),
    models_url: Optional[str] = typer.Option(None, "--models-url", help="ask_model / generate_steered through an "
                                             "OpenAI-compatible endpoint serving base, finetuned, steered-p{j} "
                                             "(`difflens serve`, vLLM) instead of in-process models"),
    models_key_env: str = typer.Option("", "--models-key-env", help="env var with that endpoint's bearer token"),
    backend: str = typer.Option("hf", "--backend", help="generation backend of ask_model / generate_steered: hf "
                                "(in process, the reference) or vllm (needs difflens\\[vllm])"),
    grade_repeats: int = typer.Option(3, "--grade-repeats", help="hypothesis gradings averaged per episode"),
    llm_model: Optional[str] = LLM_MODEL, llm_base_url: str = LLM_URL, llm_key_env: str = LLM_KEY,
    device: str = DEVICE, dtype: str = DTYPE, device_map: Optional[str] = DEVICE_MAP,
    max_memory: Optional[str] = MAX_MEMORY, base_device: Optional[str] = BASE_DEVICE,
    ft_device: Optional[str] = FT_DEVICE,
) -> None:
    """Run the agent R times with a budget of I model interactions; grade each final description."""
    from ..agent.prompts import AGENT_METHOD_CHOICES
    from ..agent.providers import EndpointAgent, LocalAgent, ManualAgent
    from ..agent.records import setting_key
    from ..agent.run import run_setting, write_summary
    from ..agent.tools import InProcessModels, Toolbox
    from ..files import read_json
    from ..organisms.spec import load_spec
    from ..rundir.layout import RunLayout

    kind = "blackbox" if blackbox else "adl"
    clients: list[Any] = []
    try:
        layout = RunLayout(run)
        if not layout.manifest.exists():
            raise ConfigError(f"{run} is not a run directory (no manifest.json): run `difflens collect` first.")
        if budget < 0 or runs < 1 or max_turns < 1 or grade_repeats < 1:
            raise ConfigError("--budget must be ≥ 0, --runs, --max-turns and --grade-repeats ≥ 1.")
        if method not in AGENT_METHOD_CHOICES:
            raise ConfigError(f"--method must be one of {', '.join(AGENT_METHOD_CHOICES)}, got {method!r}.")
        if blackbox and method != "adl":
            raise ConfigError("--blackbox sees no diffing method: drop --method.")
        if not blackbox and method != "adl":
            from ..agent.views import resolve_methods

            resolve_methods(layout, method)  # a run without the method's results fails here, before any call
        if protocol not in ("auto", "native", "text"):
            raise ConfigError(f"--protocol must be auto, native or text, got {protocol!r}.")
        if provider not in ("endpoint", "local", "manual"):
            raise ConfigError(f"--agent-provider must be endpoint, local or manual, got {provider!r}.")
        from ..backends import check_backend

        check_backend(backend)
        if backend != "hf" and models_url:
            raise ConfigError("--backend and --models-url both say where generations come from: choose one.")
        name = organism
        if name is None and description is None:
            spec_str = str(read_json(layout.manifest)["models"]["finetuned"]["spec"])
            name = spec_str.split(":", 1)[1] if spec_str.startswith("organism:") else None
        truth, otype, rubric = description, organism_type, None
        if name is not None:
            spec = load_spec(name)
            truth, otype, name, rubric = description or spec.grader_description(), str(spec.type), spec.name, spec.rubric
        grader = None
        if llm_model:
            grader = llm_client(llm_model, llm_base_url, llm_key_env, needed_by="hypothesis grading")
            clients.append(grader)
        if provider == "endpoint":
            model = agent_model or llm_model
            if not model:
                raise ConfigError("the agent needs a model: --agent-model (or --llm-model), or --agent-provider "
                                  "local / manual.")
            client = llm_client(model, agent_base_url or llm_base_url or DEFAULT_LLM_URL,
                                agent_key_env if agent_key_env is not None else (llm_key_env or DEFAULT_KEY_ENV),
                                needed_by="--agent-model")
            clients.append(client)
            agent = EndpointAgent(client, max_tokens=agent_max_tokens)
        elif provider == "local":
            agent = LocalAgent(agent_model or "smollm2-135m-instruct", max_new_tokens=agent_max_tokens)
        else:
            agent = ManualAgent()
        if models_url:
            from ..agent.remote import EndpointModels

            access: Any = EndpointModels(models_url, api_key_env=models_key_env)
        elif backend != "hf":
            from ..backends import backend_for_run
            from ..backends.access import BackendModels

            access = BackendModels(layout, backend_for_run(backend, layout))
        else:
            from ..models.pair import pair_from_run

            loading = pair_loading(dtype=dtype, device=device, device_map=device_map, max_memory=max_memory,
                                   base_device=base_device, ft_device=ft_device)
            access = InProcessModels(layout, pair_loader=lambda: pair_from_run(layout, **loading))
        toolbox = Toolbox(layout, access, kind=kind, method=method if kind == "adl" else "adl")
        if truth is None:
            console.print("[yellow]no true objective (--organism / --description): episodes are not graded[/]")
        elif grader is None:
            console.print("[yellow]no --llm-model: episodes are not graded (the hypothesis grader is an LLM)[/]")
        res = run_setting(layout, agent, toolbox, kind=kind, budget=budget, runs=runs, grader=grader, organism=name,
                          organism_type=otype if truth else None, description=truth, grade_repeats=grade_repeats,
                          max_turns=max_turns, protocol=protocol, rubric=rubric)  # type: ignore[arg-type]
        doc = write_summary(layout, [res])
    except DifflensError as e:
        fail(e)
        return
    finally:
        if clients:
            from ..files import write_json

            write_json(RunLayout(run).llm_usage(), {"clients": [c.usage_summary() for c in clients]})
    key = setting_key(kind, budget, res.method)
    entry = doc["settings"][key]
    who = "blackbox agent" if kind == "blackbox" else f"agent on {res.method} evidence"
    console.print(f"[bold]{key}[/]: {who}, budget {budget}: {entry['status']}, grades {entry['grades']}")
    if "stats" in entry:
        st = entry["stats"]
        console.print(f"mean grade {st['mean']:.2f} (95% CI {st['mean_ci'][0]:.2f}–{st['mean_ci'][1]:.2f}), "
                      f"≥2: {st['share_ge2']:.0%}, ≥4: {st['share_ge4']:.0%}")
    for e in res.episodes:
        console.print(f"run {e.run_index}: {e.status}, {e.turns_used} turns, {e.interactions_used} interactions; "
                      f"{(e.final or e.error or '')[:200]!r}", highlight=False, markup=False)


def _serve_models(run: Path, *, dataset: Optional[str], layer: Optional[int], token_env: Optional[str], host: str,
                  loading: dict[str, Any], max_queue: int, max_tokens: int, backend: Optional[str] = None,
                  tensor_parallel_size: Optional[int] = None,
                  gpu_memory_utilization: Optional[float] = None) -> tuple[Any, Any, Optional[str]]:
    """(layout, model service, token) of ``difflens serve`` / ``difflens explore``: the run checked, the
    token read from its variable (never printed), the generation backend checked (``vllm`` without vLLM
    is an error naming the extra, before any model loads), the pair loaded with the placement options."""
    import os

    from ..explore.service import Limits, ModelService
    from ..rundir.layout import RunLayout

    layout = RunLayout(run)
    if not layout.manifest.exists() and not (layout.root / "methods").is_dir():
        raise ConfigError(f"{run} is not a run directory (no manifest.json and no method results).")
    if max_queue < 1 or max_tokens < 1:
        raise ConfigError("--max-queue and --max-tokens must be ≥ 1.")
    token = None
    if token_env:
        token = os.environ.get(token_env)
        if not token:
            raise ConfigError(f"--token-env {token_env}: the variable is not set or empty.")
    if host not in ("127.0.0.1", "localhost", "::1") and token is None:
        console.print("[yellow]warning: listening beyond loopback without --token-env: anyone who can reach "
                      "this port can use the models[/]")
    from ..models.pair import load_pair, pair_from_run

    def loader() -> Any:
        if layout.manifest.exists():
            return pair_from_run(layout, **loading)
        from ..report.gather import _methods_pair

        models = _methods_pair(layout) or {}
        return load_pair(models["base"]["spec"], models["finetuned"]["spec"], **loading)

    name, options = backend_choice(backend, tensor_parallel_size, gpu_memory_utilization)
    vllm = None
    if name == "vllm":
        # the HF pair still loads: amplification needs both models' logits at every step and heat maps
        # their hidden states; base, finetuned and steered completions stream through vLLM's engines
        from ..backends import backend_for_run

        vllm = backend_for_run(name, layout, **options).start()  # type: ignore[attr-defined]
    limits = Limits(max_queue=max_queue, max_tokens=max_tokens, default_max_tokens=min(256, max_tokens))
    service = ModelService.from_run(layout, dataset=dataset, layer=layer, pair_loader=loader, limits=limits, vllm=vllm)
    return layout, service, token


_HOST = typer.Option("127.0.0.1", "--host", help="interface to listen on (loopback by default)")
_TOKEN_ENV = typer.Option(None, "--token-env", help="NAME of an env var holding a bearer token that clients must "
                          "send (never printed)")
_MAX_QUEUE = typer.Option(64, "--max-queue", help="generation requests that may wait; beyond: 429 with Retry-After")
_SERVE_BACKEND = typer.Option(None, "--backend", help="who generates the base, finetuned and steered completions: "
                              "hf (the run's pair; requests that wait together run as one batch) or vllm (pip install 'difflens\\[vllm]', GPU; "
                              "requests batched in vLLM's engines); amplification and heat maps stay on the HF pair")
_MAX_TOKENS = typer.Option(512, "--max-tokens", help="most new tokens one completion may ask for")


def serve_cmd(
    run: Path = typer.Argument(..., help="run directory"),
    host: str = _HOST,
    port: int = typer.Option(8000, "--port"),
    token_env: Optional[str] = _TOKEN_ENV,
    dataset: Optional[str] = typer.Option(None, "--dataset"), layer: Optional[int] = typer.Option(None, "--layer"),
    max_queue: int = _MAX_QUEUE, max_tokens: int = _MAX_TOKENS,
    device: str = DEVICE, dtype: str = DTYPE, device_map: Optional[str] = DEVICE_MAP,
    max_memory: Optional[str] = MAX_MEMORY, base_device: Optional[str] = BASE_DEVICE,
    ft_device: Optional[str] = FT_DEVICE,
    backend: Optional[str] = _SERVE_BACKEND, tensor_parallel_size: Optional[int] = TP_SIZE,
    vllm_gpu_memory_utilization: Optional[float] = VLLM_MEM,
) -> None:
    """An OpenAI-compatible endpoint over the run's base, finetuned, steered-p{j} and amplified models."""
    from ..explore.server import serve_forever
    from ..serve import serve_app

    try:
        loading = pair_loading(dtype=dtype, device=device, device_map=device_map, max_memory=max_memory,
                               base_device=base_device, ft_device=ft_device)
        _, service, token = _serve_models(run, dataset=dataset, layer=layer, token_env=token_env, host=host,
                                          loading=loading, max_queue=max_queue, max_tokens=max_tokens,
                                          backend=backend, tensor_parallel_size=tensor_parallel_size,
                                          gpu_memory_utilization=vllm_gpu_memory_utilization)
    except (DifflensError, OSError) as e:
        fail(e)
        return
    console.print(f"serving {', '.join(service.names())} at http://{host}:{port}/v1 "
                  f"({'bearer token required' if token else 'no token'}); Ctrl-C stops")
    for note in service.notes.values():
        console.print(f"[yellow]{note}[/]", highlight=False)
    serve_forever(serve_app(service, token=token), host=host, port=port)


def explore_cmd(
    run: Path = typer.Argument(..., help="run directory (any finished stage; missing ones are named in the page)"),
    host: str = _HOST,
    port: int = typer.Option(8765, "--port"),
    token_env: Optional[str] = _TOKEN_ENV,
    dataset: Optional[str] = typer.Option(None, "--dataset"), layer: Optional[int] = typer.Option(None, "--layer"),
    max_queue: int = _MAX_QUEUE, max_tokens: int = _MAX_TOKENS,
    device: str = DEVICE, dtype: str = DTYPE, device_map: Optional[str] = DEVICE_MAP,
    max_memory: Optional[str] = MAX_MEMORY, base_device: Optional[str] = BASE_DEVICE,
    ft_device: Optional[str] = FT_DEVICE,
    backend: Optional[str] = _SERVE_BACKEND, tensor_parallel_size: Optional[int] = TP_SIZE,
    vllm_gpu_memory_utilization: Optional[float] = VLLM_MEM,
) -> None:
    """An interactive explorer in the browser: chat with base, finetuned, steered and amplified models side by
    side, per-token heat maps of any text, the Patchscope grid, top contexts and the run's results."""
    from ..explore.app import create_app
    from ..explore.server import serve_forever

    try:
        loading = pair_loading(dtype=dtype, device=device, device_map=device_map, max_memory=max_memory,
                               base_device=base_device, ft_device=ft_device)
        layout, service, token = _serve_models(run, dataset=dataset, layer=layer, token_env=token_env, host=host,
                                               loading=loading, max_queue=max_queue, max_tokens=max_tokens,
                                               backend=backend, tensor_parallel_size=tensor_parallel_size,
                                               gpu_memory_utilization=vllm_gpu_memory_utilization)
    except (DifflensError, OSError) as e:
        fail(e)
        return
    where = f"[{host}]" if ":" in host else host
    console.print(f"difflens explore: http://{where}:{port}/  ({'bearer token required' if token else 'no token'}; "
                  f"models {', '.join(service.names())}); Ctrl-C stops")
    for note in service.notes.values():
        console.print(f"[yellow]{note}[/]", highlight=False)
    serve_forever(create_app(service, layout=layout, token=token), host=host, port=port)
