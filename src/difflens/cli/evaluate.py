"""``difflens evaluate RUN``: token relevance, steering similarity, causal effect, identification."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer
from rich.table import Table

from ..errors import ConfigError, DifflensError
from .options import (BASE_DEVICE, DEVICE, DEVICE_MAP, DTYPE, FT_DEVICE, GEN_BACKEND, GRADER, LLM_KEY, LLM_MODEL,
                      LLM_URL, MAX_MEMORY, O_DEVICE, O_DTYPE, TP_SIZE, VLLM_MEM, backend_overrides, console, fail,
                      llm_client, pair_loading, placement_overrides)

PARTS_HELP = ("parts to compute (repeatable): relevance, similarity, causal, identification, leakage, methods "
              "(default: all)")


def evaluate_cmd(
    run: Path = typer.Argument(..., help="run directory (after collect, lens, steer)"),
    organism: Optional[str] = typer.Option(None, "--organism", help="organism NAME or SPEC.yaml: D_ft and the true "
                                           "description (default: the run's organism:NAME model, if any)"),
    ft_data: Optional[Path] = typer.Option(None, "--ft-data", help="D_ft as .jsonl/.json/.parquet/.txt "
                                           "(chat records: assistant turns only)"),
    description: Optional[str] = typer.Option(None, "--description", help="the true finetuning objective"),
    candidates: Optional[list[Path]] = typer.Option(None, "--candidates", help="extra organism YAMLs or "
                                                    "directories for identification (repeatable)"),
    parts: Optional[list[str]] = typer.Option(None, "--part", help=PARTS_HELP),
    quick: bool = typer.Option(False, "--quick", help="laptop size: 16 texts × 48 tokens and 8 random "
                               "directions for the causal effect, 200 similarity samples"),
    causal_texts: Optional[int] = typer.Option(None, "--causal-texts", help="texts per dataset for ΔCE (default 64)"),
    causal_random: Optional[int] = typer.Option(None, "--causal-random", help="random-difference baseline "
                                                "vectors (default 64)"),
    embedder: Optional[str] = typer.Option(None, "--embedder", help="sentence-transformers model name or path "
                                           "(default: the embedded all-MiniLM-L6-v2)"),
    layer: Optional[list[int]] = typer.Option(None, "--layer", help="absolute layers (default: all collected)"),
    grader: str = GRADER, llm_model: Optional[str] = LLM_MODEL, llm_base_url: str = LLM_URL,
    llm_key_env: str = LLM_KEY, device: str = DEVICE, dtype: str = DTYPE, device_map: Optional[str] = DEVICE_MAP,
    max_memory: Optional[str] = MAX_MEMORY, base_device: Optional[str] = BASE_DEVICE,
    ft_device: Optional[str] = FT_DEVICE,
) -> None:
    """The paper's quantitative evaluations of a run → RUN/eval/summary.json (shown in the report)."""
    from ..eval.evaluate import PARTS, EvalConfig, evaluate
    from ..eval.ftdata import resolve_ft_data
    from ..files import read_json, write_json
    from ..graders.relevance import LLMRelevance, OfflineRelevance
    from ..rundir.layout import RunLayout
    from ..models.pair import pair_from_run, run_pair_precision

    client = None
    try:
        layout = RunLayout(run)
        manifest = _run_manifest(layout)
        bad = [p for p in parts or [] if p not in PARTS]
        if bad:
            raise ConfigError(f"unknown part(s) {bad}: choose from {', '.join(PARTS)}.")
        if grader not in ("offline", "llm"):
            raise ConfigError(f"unknown grader backend '{grader}': use 'offline' or 'llm'.")
        if grader == "llm":
            client = llm_client(llm_model, llm_base_url, llm_key_env, needed_by="--grader llm")
        kw: dict[str, Any] = {"candidates": [str(c) for c in candidates or []]}
        if parts:
            kw["parts"] = parts
        if embedder:
            kw["embedder"] = embedder
        cfg = EvalConfig.quick(**kw) if quick else EvalConfig(**kw)
        causal = {k: v for k, v in (("n_texts", causal_texts), ("n_random", causal_random)) if v is not None}
        if causal:
            cfg = cfg.model_copy(update={"causal": cfg.causal.model_copy(update=causal)})
        loading = pair_loading(dtype=dtype, device=device, device_map=device_map, max_memory=max_memory,
                               base_device=base_device, ft_device=ft_device)
        ft = resolve_ft_data(manifest, organism=organism, ft_data=ft_data, description=description)
        rel = LLMRelevance(client) if client is not None else OfflineRelevance(cfg.embedder)
        def load_pair_and_estimate() -> Any:  # called only when the causal effect must be computed
            pair = pair_from_run(layout, **loading)
            _announce_causal(pair, layout, cfg, layer)
            return pair

        summary = evaluate(layout, ft, relevance_grader=rel, cfg=cfg, pair_loader=load_pair_and_estimate, layers=layer,
                           precision=run_pair_precision(layout, **loading))
    except DifflensError as e:
        fail(e)
        return
    finally:
        if client is not None:
            write_json(RunLayout(run).llm_usage(), client.usage_summary())
    _print(summary)
    console.print(f"summary: {RunLayout(run).evaluation()} (render it with `difflens report {run}`)")


def _announce_causal(pair: Any, layout: Any, cfg: Any, layers: Any) -> None:
    """The causal effect's expected time before it starts, when long (every text at max_len: an
    upper bound; :func:`difflens.run.cost.announce` at the ratio bench/floor.py measured)."""
    from ..adl.collect import load_collected
    from ..run import cost

    try:
        shape = cost.ModelShape.of_pair(pair)
        n, L = cfg.causal.n_texts, cfg.causal.max_len
        flops = 0.0
        for dataset, li in layout.targets(None, layers):
            k = load_collected(layout, dataset, li).positions
            flops += 2 * cost.causal_flops(shape, li, [L] * n, k + cfg.causal.n_random)  # D_ft and D_pt
            flops += cost.causal_flops(shape, li, [], 0, chat_lengths=[L] * n)
    except Exception:  # noqa: BLE001 - an estimate never stops the evaluation
        return
    cost.announce(f"causal effect ({n} texts × ≤{L} tokens per dataset, {cfg.causal.n_random} random directions), "
                  "at most", flops, pair.device, str(getattr(pair, "precision", "float32")), cost.CAUSAL_FLOOR_RATIO,
                  "it resumes from its last finished batch if interrupted; --causal-texts / --causal-random or "
                  "--quick shorten it")


def _run_manifest(layout: Any) -> dict[str, Any]:
    """The run's manifest; for a run with only `difflens diff` results, the pair its results name."""
    from ..files import read_json

    if layout.manifest.exists():
        return read_json(layout.manifest)
    for path in sorted((layout.root / "methods").glob("*/*.json")):
        try:
            models = read_json(path)["models"]
            return {"models": {"base": {"spec": models["base"]["spec"]},
                               "finetuned": {"spec": models["finetuned"]["spec"]}}}
        except (KeyError, TypeError, DifflensError):
            continue
    raise ConfigError(f"{layout.root} is not a run directory (no manifest.json, no method results): run "
                      "`difflens collect` or `difflens diff` first.")


def _print(summary: Any) -> None:
    for reason in sorted(set(summary.skipped.items())):
        console.print(f"[yellow]skipped[/] {reason[0]}: {reason[1]}")
    for le in summary.layers():
        title = f"{le.dataset} layer {le.layer}"
        for part, why in le.skipped.items():
            console.print(f"[yellow]skipped[/] {part} ({title}): {why}")
        if le.relevance:
            t = Table("source", "method", "per position (% relevant)", "max", title=f"token relevance, {title}")
            for src, per in le.relevance.items():
                for m, r in per.items():
                    t.add_row(src, m, " ".join(f"{x:.0f}" for x in r.per_position), f"{r.max:.0f}")
            console.print(t)
        if le.steering_similarity:
            t = Table("pair", "mean cos", "std", title=f"steering similarity, {title}")
            for k, s in le.steering_similarity.items():
                t.add_row(k, f"{s.mean:.3f}", f"{s.std:.3f}")
            console.print(t)
        if le.causal:
            c = le.causal
            t = Table("data", "ΔCE per position (δ̄_j)", "random mean ± std", title=f"causal effect (nats/token), {title}")
            for d in ("ft", "pt"):
                t.add_row(d, " ".join(f"{x:+.3f}" for x in c.delta[d]),
                          f"{c.random[d]['mean']:+.3f} ± {c.random[d]['std']:.3f}")
            console.print(t)
        if le.leakage:
            lk = le.leakage
            console.print(f"leakage ({title}): {100 * lk.ft.share:.0f}% of {lk.ft.n} unsteered answers give the domain "
                          "away" + (f" (base model: {100 * lk.base.share:.0f}%)" if lk.base else ""))
        if le.identification:
            i = le.identification
            console.print(f"identification ({title}): true objective ranked {i.adl_rank}/{i.n_candidates} from ADL "
                          f"evidence, {i.blackbox_rank}/{i.n_candidates} from unsteered samples only")
    if summary.methods:
        t = Table("method", "relevance max / mean", "baseline", "control", "sim. to D_ft (method / baseline / control)",
                  "rank", "seconds", title="diffing methods (top-20 tokens; baselines: one model alone; controls: "
                  "no narrow finetune)")
        pct = lambda x: "–" if x is None else f"{x:.0f}%"  # noqa: E731
        sim = lambda x: "–" if x is None else f"{x:.3f}"  # noqa: E731
        for name, me in summary.methods.items():
            idn = me.identification or {}
            t.add_row(name, f"{pct(me.role_relevance('method'))} / {pct(me.role_relevance('method', 'mean'))}",
                      pct(me.role_relevance("baseline")), pct(me.role_relevance("control")),
                      " / ".join(sim(me.role_similarity(r)) for r in ("method", "baseline", "control")),
                      f"{idn['rank']}/{idn['n_candidates']}" if idn else "–", f"{me.cost.get('seconds', 0):.0f}")
        console.print(t)
        for name, me in summary.methods.items():
            for why in me.missing:
                console.print(f"[yellow]missing[/] {name}: {why}")


def experiment_cmd(
    name: str = typer.Argument(..., help="adl (Fig. 2a/2b/7 + identification over organisms), mixing (Fig. 8), all, "
                               "methods (ADL vs diff mining, KL, amplification) or agents"),
    methods: Optional[str] = typer.Option(None, "--methods", help="the diffing methods, comma-separated (adl, "
                                          "mining, kl, amplify): methods compares them (default: all four); agents "
                                          "runs its settings once per method (also: all; default: adl)"),
    out: Path = typer.Option(Path("experiments"), "--out", help="experiment directory (OUT/NAME/...)"),
    organism: Optional[list[str]] = typer.Option(None, "--organism", help="organisms (repeatable; default: all "
                                                 "built-in for adl, cake_bake for mixing)"),
    mix: Optional[list[float]] = typer.Option(None, "--mix", help="mixing ratios D_pt:D_ft (repeatable; default "
                                              "0 0.1 1 2)"),
    base: str = typer.Option("smollm2-135m-instruct", "--base"),
    quick: bool = typer.Option(False, "--quick", help="laptop size: 1,000 collection samples, steering on one "
                               "position with 6 prompts, quick evaluation"),
    samples: Optional[int] = typer.Option(None, "--samples", help="collection samples per run"),
    train: Optional[list[str]] = typer.Option(None, "--train", help="training recipe override KEY=VALUE for "
                                              "every organism (repeatable), e.g. chat_mix=1 lora=true lr=3e-5"),
    runs: int = typer.Option(5, "--runs", help="agents: episodes per organism and setting"),
    parallel: int = typer.Option(1, "--parallel", help="agents: cells run in parallel threads"),
    executor: str = typer.Option("local", "--executor", help="where cells run: local (a process pool of --workers) "
                                 "or ray (a Ray cluster; needs difflens[ray])"),
    workers: int = typer.Option(1, "--workers", help="local: cells at once (1: one after the other, in process)"),
    address: Optional[str] = typer.Option(None, "--address", help="ray: cluster address (auto: the running "
                                          "cluster; default: a local Ray instance)"),
    cell_gpus: float = typer.Option(0.0, "--cell-gpus", help="ray: GPUs each cell reserves (1 for a pair on a GPU)"),
    device: Optional[str] = O_DEVICE, dtype: Optional[str] = O_DTYPE, device_map: Optional[str] = DEVICE_MAP,
    max_memory: Optional[str] = MAX_MEMORY, base_device: Optional[str] = BASE_DEVICE, ft_device: Optional[str] = FT_DEVICE,
    agent_provider: str = typer.Option("endpoint", "--agent-provider", help="agents: endpoint, local or manual"),
    agent_model: Optional[str] = typer.Option(None, "--agent-model", help="agents: the agent's model"),
    agent_base_url: Optional[str] = typer.Option(None, "--agent-base-url"),
    agent_key_env: Optional[str] = typer.Option(None, "--agent-key-env"),
    llm_model: Optional[str] = LLM_MODEL, llm_base_url: str = LLM_URL, llm_key_env: str = LLM_KEY,
) -> None:
    """The paper's comparisons over built-in organisms as one resumable experiment and report.

    NAME: adl (Fig. 2a, 2b, 7, identification, leakage), mixing (Fig. 8), all (both), methods (ADL vs
    diff mining, per-token KL, amplification: relevance vs baseline vs control, identification rank,
    cost), or agents (the agent grid of Fig. 4 over the adl experiment's runs: ADL i=0/5, blackbox
    i=0/5/50; with --methods, the agent's settings once per diffing method, over the methods
    experiment's runs where the adl experiment's lack the method)."""
    from ..run.experiment import EXPERIMENTS, MIX_RATIOS, ExperimentConfig, run_experiment
    from ..report.experiment import render_experiment

    from ..executors import make_executor

    try:
        ex = make_executor(executor, workers=workers, address=address, num_gpus=cell_gpus)
    except DifflensError as e:
        fail(e)
        return
    if name == "agents":
        _agents(out, organism, runs, parallel, agent_provider, agent_model, agent_base_url, agent_key_env, llm_model,
                llm_base_url, llm_key_env, executor=ex, methods=[methods] if methods else None)
        return
    try:
        if name not in EXPERIMENTS:
            raise ConfigError(f"unknown experiment {name!r}: choose from {', '.join(EXPERIMENTS)} or agents.")
        overrides = _parse_overrides(train or [])
        chosen = _method_list(methods or "adl,mining,kl,amplify")
        cfg = ExperimentConfig(name=name, out=out / name, base=base, organisms=organism or None,
                               mix_ratios=list(mix) if mix else list(MIX_RATIOS), quick=quick, samples=samples,
                               train=overrides, methods=chosen, placement=placement_overrides(
                                   device=device, dtype=dtype, device_map=device_map, max_memory=max_memory,
                                   base_device=base_device, ft_device=ft_device))
        res = run_experiment(cfg, executor=ex)
        path = render_experiment(cfg.out)
    except DifflensError as e:
        fail(e)
        return
    failed = [c for c in res.cells if c.error]
    console.print(f"{len(res.cells) - len(failed)}/{len(res.cells)} cells finished; report: [bold]{path}[/]")
    for c in failed:
        console.print(f"[red]✗[/] {c.organism} 1:{c.mix_ratio:g}: {c.error}", highlight=False)


def _method_list(methods: str) -> list[str]:
    from ..run.experiment import ALL_METHODS

    names = [m.strip() for m in methods.split(",") if m.strip()]
    bad = [m for m in names if m not in ALL_METHODS]
    if bad or not names:
        raise ConfigError(f"--methods: unknown method(s) {', '.join(bad) or '(none given)'}; choose from "
                          f"{', '.join(ALL_METHODS)}.")
    return names


def _agents(out: Path, organisms: Optional[list[str]], runs: int, parallel: int, provider: str,
            agent_model: Optional[str], agent_base_url: Optional[str], agent_key_env: Optional[str],
            llm_model: Optional[str], llm_base_url: str, llm_key_env: str, executor: Any = None,
            methods: Optional[list[str]] = None) -> None:
    from ..agent.grid import run_agent_grid
    from ..agent.prompts import AGENT_METHOD_CHOICES
    from ..agent.providers import EndpointAgent, LocalAgent, ManualAgent
    from ..organisms.spec import list_specs
    from ..report.agent import render_agent_grid

    try:
        chosen = list(dict.fromkeys(m.strip() for item in methods or ["adl"] for m in item.split(",") if m.strip()))
        bad = [m for m in chosen if m not in AGENT_METHOD_CHOICES]
        if bad or not chosen:
            raise ConfigError(f"--methods: unknown method(s) {', '.join(bad) or '(none given)'}; choose from "
                              f"{', '.join(AGENT_METHOD_CHOICES)}.")
        orgs = organisms or [s.name for s in list_specs()]
        grader = llm_client(llm_model, llm_base_url, llm_key_env, needed_by="hypothesis grading") if llm_model else None
        spec: dict[str, Any] = {"agent": {"provider": provider, "model": agent_model},
                                "grader": {"model": llm_model, "base_url": llm_base_url, "key_env": llm_key_env}
                                if llm_model else None}  # the same, as plain data for a parallel --executor
        if provider == "endpoint":
            model = agent_model or llm_model
            if not model:
                raise ConfigError("the agent grid needs --agent-model (or --llm-model), or --agent-provider local.")
            key_env = agent_key_env if agent_key_env is not None else llm_key_env
            client = llm_client(model, agent_base_url or llm_base_url, key_env, needed_by="--agent-model")
            spec["agent"].update(model=model, base_url=agent_base_url or llm_base_url, key_env=key_env)

            def make() -> Any:
                return EndpointAgent(client)
        elif provider == "local":
            def make() -> Any:
                return LocalAgent(agent_model or "smollm2-135m-instruct")
        elif provider == "manual":
            def make() -> Any:
                return ManualAgent()
        else:
            raise ConfigError(f"--agent-provider must be endpoint, local or manual, got {provider!r}.")
        if provider == "manual" and executor is not None and executor.parallel:
            raise ConfigError("--agent-provider manual answers in this terminal: it cannot run on --workers > 1 "
                              "or --executor ray.")
        if grader is None:
            console.print("[yellow]no --llm-model: hypotheses are not graded (the grader is an LLM)[/]")
        # each cell's run: the adl experiment's (the paper's grid), else the methods experiment's
        run_agent_grid([out / "adl" / "runs", out / "methods" / "runs"], out / "agents", orgs, provider=make,
                       grader=grader, runs=runs, parallel=parallel, executor=executor, cell_spec=spec, methods=chosen)
        path = render_agent_grid(out / "agents")
    except (DifflensError, FileNotFoundError) as e:
        fail(e)
        return
    console.print(f"agent grid: {path}")


def _parse_overrides(items: list[str]) -> dict[str, Any]:
    """``KEY=VALUE`` pairs as TrainConfig overrides (numbers and true/false parsed); unknown keys fail."""
    from ..organisms.train import TrainConfig

    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--train expects KEY=VALUE, got {item!r}")
        if key not in TrainConfig.model_fields:
            raise ConfigError(f"--train: unknown training option {key!r}; valid: {sorted(TrainConfig.model_fields)}")
        val: Any = raw
        if raw.lower() in ("true", "false"):
            val = raw.lower() == "true"
        else:
            try:
                val = int(raw)
            except ValueError:
                try:
                    val = float(raw)
                except ValueError:
                    pass
        out[key] = val
    return out


SWEEP_POSITIONS = (0, 1, 2, 4, 8, 16, 32, 64, 127)


def sweep_cmd(
    finetuned: str = typer.Option(..., "--finetuned", help="finetuned model (organism:NAME, path, hub id)"),
    out: Path = typer.Option(..., "--out", help="run directory"),
    base: str = typer.Option("smollm2-135m-instruct", "--base"),
    organism: Optional[str] = typer.Option(None, "--organism", help="ground truth for evaluation (default: the "
                                           "finetuned organism:NAME)"),
    ft_data: Optional[str] = typer.Option(None, "--ft-data"), description: Optional[str] = typer.Option(None, "--description"),
    positions: int = typer.Option(128, "--positions", help="collect the first K positions; lens, steering and "
                                  "evaluation at 0, 1, 2, 4, …, 64, K−1"),
    layers: str = typer.Option("0.25,0.5,0.75,1.0", "--layers", help="relative depths or absolute indices"),
    steer_positions: Optional[list[int]] = typer.Option(None, "--steer-position", help="steer only at these "
                                                        "positions (default: the sweep positions; steering costs the most)"),
    samples: int = typer.Option(2000, "--samples"),
    quick: bool = typer.Option(False, "--quick", help="short steering (32 tokens, 6 prompts, 2 samples)"),
    backend: Optional[str] = GEN_BACKEND, tensor_parallel_size: Optional[int] = TP_SIZE,
    vllm_gpu_memory_utilization: Optional[float] = VLLM_MEM,
    device: Optional[str] = O_DEVICE, dtype: Optional[str] = O_DTYPE, device_map: Optional[str] = DEVICE_MAP,
    max_memory: Optional[str] = MAX_MEMORY, base_device: Optional[str] = BASE_DEVICE, ft_device: Optional[str] = FT_DEVICE,
) -> None:
    """Positions up to K and layers across depth: relevance and steering similarity per position and layer."""
    from ..run.config import EvaluateSection, LensSection, RunConfig, SteeringSection
    from ..run.pipeline import Runner

    try:
        depth = [float(x) if "." in x else int(x) for x in layers.split(",") if x.strip()]
        pos = [j for j in SWEEP_POSITIONS if j < positions - 1] + [positions - 1]
        pos = sorted(set(pos))
        org = organism or (finetuned.split(":", 1)[1] if finetuned.startswith("organism:") else None)
        steer = SteeringSection(positions=steer_positions or pos)
        if quick:
            steer = steer.model_copy(update={"max_new_tokens": 32, "prompts": steer.prompts[:6], "final_samples": 2})
        overrides = backend_overrides(backend, tensor_parallel_size, vllm_gpu_memory_utilization)
        overrides |= placement_overrides(device=device, dtype=dtype, device_map=device_map, max_memory=max_memory,
                                         base_device=base_device, ft_device=ft_device)
        cfg = RunConfig(out=out, base=base, finetuned=finetuned, organism=org, ft_data=ft_data, description=description,
                        positions=positions, layers=depth, samples=samples,
                        lens=LensSection(positions=pos), steering=steer,
                        evaluate=EvaluateSection(parts=["relevance", "similarity"]), **overrides)
        Runner(cfg).run()
    except (DifflensError, ValueError) as e:
        fail(e)
        return
    console.print(f"sweep finished: {out} (report: {out / 'report.html'})")
