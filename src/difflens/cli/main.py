"""The ``difflens`` command line (Typer)."""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Iterator, Optional

import typer
from rich.table import Table

from ..errors import DifflensError
from .options import (BASE_DEVICE, DEVICE, DEVICE_MAP, DTYPE, FT_DEVICE, GEN_BACKEND, GRADER, LLM_KEY, LLM_MODEL,
                      LLM_URL, MAX_MEMORY, O_DEVICE, O_DTYPE, TP_SIZE, VLLM_MEM, backend_choice, backend_overrides,
                      console, fail as _fail, llm_client, pair_loading, placement_overrides,
                      validation_error)

class _App(typer.Typer):
    """The command line; a value a config model rejects (``--samples -5``) is one ``error:`` line naming
    the option, exit status 2, before any compute — never a pydantic traceback."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        from pydantic import ValidationError

        try:
            return super().__call__(*args, **kwargs)
        except ValidationError as e:
            import sys

            from rich.markup import escape

            # the command has returned: print as fail() does, but exit here (no click handler is left)
            console.print(f"[bold red]error:[/] {escape(str(validation_error(e, _FIELD_FLAGS)))}", highlight=False)
            sys.exit(2)


_FIELD_FLAGS = {"final_samples": "--samples"}  # config fields whose option has another name


app = _App(help="difflens: read finetuning objectives out of base-vs-finetuned activation differences.",
           no_args_is_help=True, pretty_exceptions_enable=False)


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
    from ..models.sources import list_models

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
    batch_size: int = typer.Option(256, "--batch-size", help="samples per forward (speed and memory; δ̄ is the same)"),
    seed: int = typer.Option(0, "--seed"),
    text_field: str = typer.Option("text", "--text-field", help="column of local/hub datasets"),
    device: str = DEVICE, dtype: str = DTYPE, device_map: Optional[str] = DEVICE_MAP,
    max_memory: Optional[str] = MAX_MEMORY, base_device: Optional[str] = BASE_DEVICE,
    ft_device: Optional[str] = FT_DEVICE,
) -> None:
    """Collect mean activation differences δ̄ of the first k tokens."""
    from ..adl.collect import CollectConfig, collect as run_collect
    from ..data.corpora import load_corpus
    from ..models.pair import load_pair
    from ..rundir.layout import RunLayout

    try:
        cfg = CollectConfig(datasets=dataset, samples=samples, positions=positions, layers=_parse_layers(layers),
                            seed=seed, batch_size=batch_size, text_field=text_field)
        loading = pair_loading(dtype=dtype, device=device, device_map=device_map, max_memory=max_memory,
                               base_device=base_device, ft_device=ft_device)
        for d in cfg.datasets:  # fail on bad data before loading any model
            load_corpus(d, text_field=text_field)
        pair = load_pair(base, finetuned, **loading)
        from ..run.stages import collect_estimate

        collect_estimate(pair, cfg)  # a line only when it will take a while
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


@contextlib.contextmanager
def _open_run(run: Path, grader: str, llm_model: Optional[str], llm_base_url: str,
              llm_key_env: str, loading: dict[str, Any]) -> Iterator[tuple[Any, Any, Any]]:
    """The run's layout, its model pair (``loading``: dtype and placement) and the graders; LLM usage
    is written when the block ends."""
    from ..graders import graders_for
    from ..rundir.layout import RunLayout, write_json
    from ..models.pair import pair_from_run

    client = llm_client(llm_model, llm_base_url, llm_key_env, needed_by="--grader llm") if grader == "llm" else None
    layout = RunLayout(run)
    pair = pair_from_run(layout, **loading)
    try:
        yield layout, pair, graders_for(pair, grader, client)
    finally:
        if client is not None:
            write_json(layout.llm_usage(), client.usage_summary())


@app.command()
def lens(
    run: Path = typer.Argument(..., help="run directory written by `difflens collect`"),
    positions: Optional[list[int]] = typer.Option(None, "--position", help="positions (default: all collected)"),
    layer: Optional[list[int]] = typer.Option(None, "--layer", help="absolute layers (default: all collected)"),
    grader: str = GRADER, llm_model: Optional[str] = LLM_MODEL, llm_base_url: str = LLM_URL,
    llm_key_env: str = LLM_KEY, device: str = DEVICE, dtype: str = DTYPE, device_map: Optional[str] = DEVICE_MAP,
    max_memory: Optional[str] = MAX_MEMORY, base_device: Optional[str] = BASE_DEVICE,
    ft_device: Optional[str] = FT_DEVICE,
) -> None:
    """Logit lens and Patchscope (with scale selection) on δ̄ and both baselines."""
    from ..run.stages import LensConfig, run_lens

    try:
        loading = pair_loading(dtype=dtype, device=device, device_map=device_map, max_memory=max_memory,
                               base_device=base_device, ft_device=ft_device)
        with _open_run(run, grader, llm_model, llm_base_url, llm_key_env, loading) as (layout, pair, graders):
            res = run_lens(pair, layout, graders, LensConfig(positions=positions), layers=layer)
    except DifflensError as e:
        _fail(e)
        return
    for r in res:
        table = Table("pos", "source", "scale", "selected tokens", "top tokens", title=f"{r.dataset} layer {r.layer}")
        for e in r.entries:
            table.add_row(str(e.position), e.source, f"{e.chosen_scale:g}", " ".join(repr(t) for t in e.selected_tokens),
                          " ".join(repr(t) for t in e.top_tokens(8)))
        console.print(table)


@app.command()
def steer(
    run: Path = typer.Argument(..., help="run directory written by `difflens collect`"),
    positions: Optional[list[int]] = typer.Option(None, "--position"),
    layer: Optional[list[int]] = typer.Option(None, "--layer"),
    samples: int = typer.Option(5, "--samples", help="final samples per steering prompt"),
    max_new_tokens: int = typer.Option(128, "--max-new-tokens"),
    backend: Optional[str] = GEN_BACKEND, tensor_parallel_size: Optional[int] = TP_SIZE,
    vllm_gpu_memory_utilization: Optional[float] = VLLM_MEM,
    grader: str = GRADER, llm_model: Optional[str] = LLM_MODEL, llm_base_url: str = LLM_URL,
    llm_key_env: str = LLM_KEY, device: str = DEVICE, dtype: str = DTYPE, device_map: Optional[str] = DEVICE_MAP,
    max_memory: Optional[str] = MAX_MEMORY, base_device: Optional[str] = BASE_DEVICE,
    ft_device: Optional[str] = FT_DEVICE,
) -> None:
    """Coherence-threshold search and steered vs unsteered generations."""
    from ..adl.steering import SteeringConfig
    from ..run.stages import run_steer, steer_backend

    try:
        cfg = SteeringConfig(positions=positions, final_samples=samples, max_new_tokens=max_new_tokens)
        name, options = backend_choice(backend, tensor_parallel_size, vllm_gpu_memory_utilization)
        loading = pair_loading(dtype=dtype, device=device, device_map=device_map, max_memory=max_memory,
                               base_device=base_device, ft_device=ft_device)
        with _open_run(run, grader, llm_model, llm_base_url, llm_key_env, loading) as (layout, pair, graders):
            gen = steer_backend(pair, layout, name, **options)
            try:
                res = run_steer(pair, layout, graders, cfg, layers=layer, backend=gen)
            finally:
                close = getattr(gen, "close", None)
                if callable(close):
                    close()
    except DifflensError as e:
        _fail(e)
        return
    from ..rundir import artifacts as A

    for r in res:
        gens = A.load_jsonl(A.Generation, layout.steering_generations(r.dataset, r.layer))
        for t in r.thresholds:
            sample = next((g.text for g in gens if g.position == t.position), "")
            console.print(f"[bold]layer {r.layer} position {t.position}[/] α={t.alpha:.2f} "
                          f"({t.generations_used} generations): {sample[:160]!r}")


@app.command("run")
def run_cmd(
    config: Path = typer.Argument(..., help="run config YAML (see examples/run.yaml)"),
    methods: Optional[str] = typer.Option(None, "--methods", help="diffing methods, comma-separated: adl "
                                          "(collect → lens → steer), mining, kl, amplify (the methods stage); "
                                          "overrides the config's methods"),
    backend: Optional[str] = GEN_BACKEND, tensor_parallel_size: Optional[int] = TP_SIZE,
    vllm_gpu_memory_utilization: Optional[float] = VLLM_MEM,
    device: Optional[str] = O_DEVICE, dtype: Optional[str] = O_DTYPE, device_map: Optional[str] = DEVICE_MAP,
    max_memory: Optional[str] = MAX_MEMORY, base_device: Optional[str] = BASE_DEVICE, ft_device: Optional[str] = FT_DEVICE,
) -> None:
    """Run the stages named in a config (collect → lens → steer → report), reusing finished ones.
    The generation-backend and placement options override the config's fields."""
    from ..run.config import load_config
    from ..run.pipeline import Runner

    try:
        overrides = backend_overrides(backend, tensor_parallel_size, vllm_gpu_memory_utilization)
        overrides |= placement_overrides(device=device, dtype=dtype, device_map=device_map, max_memory=max_memory,
                                         base_device=base_device, ft_device=ft_device)
        if methods is not None:
            overrides["methods"] = [m.strip() for m in methods.split(",") if m.strip()]
        Runner(load_config(config, **overrides)).run()
    except DifflensError as e:
        _fail(e)


@app.command()
def demo(
    organism: str = typer.Option("cake_bake", "--organism", help="built-in organism to train and diff"),
    out: Optional[Path] = typer.Option(None, "--out"),
    backend: Optional[str] = GEN_BACKEND, tensor_parallel_size: Optional[int] = TP_SIZE,
    vllm_gpu_memory_utilization: Optional[float] = VLLM_MEM,
    device: Optional[str] = O_DEVICE, dtype: Optional[str] = O_DTYPE, device_map: Optional[str] = DEVICE_MAP,
    max_memory: Optional[str] = MAX_MEMORY, base_device: Optional[str] = BASE_DEVICE, ft_device: Optional[str] = FT_DEVICE,
) -> None:
    """The embedded end-to-end demo: train an organism on SmolLM2, diff it, show its secret."""
    import time

    from ..run.config import demo_config, with_overrides
    from ..run.pipeline import Runner

    t0 = time.time()
    try:
        overrides = backend_overrides(backend, tensor_parallel_size, vllm_gpu_memory_utilization)
        overrides |= placement_overrides(device=device, dtype=dtype, device_map=device_map, max_memory=max_memory,
                                         base_device=base_device, ft_device=ft_device)
        cfg = with_overrides(demo_config(organism, out), **overrides)
    except DifflensError as e:
        _fail(e)
        return
    console.print(f"[bold]difflens demo[/]: {cfg.base} vs organism '{organism}' "
                  f"(trained on first use), {cfg.samples} wiki samples, offline graders")
    try:
        Runner(cfg).run()
    except DifflensError as e:
        _fail(e)
        return
    from ..report import summary_lines

    for line in summary_lines(cfg.out):
        console.print(line)
    console.print(f"report: [bold]{(cfg.out / 'report.html').resolve()}[/]  ({time.time() - t0:.0f}s)")


@app.command()
def report(
    run: Path = typer.Argument(..., help="run directory (contains manifest.json)"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="output HTML file (default: RUN/report.html)"),
    open_browser: bool = typer.Option(False, "--open", help="open the report in a web browser"),
) -> None:
    """Write one self-contained HTML report (tokens, charts, steered samples) for a run."""
    from ..report import render_report, summary_lines

    try:
        path = render_report(run, out)
        lines = summary_lines(run)
    except DifflensError as e:
        _fail(e)
        return
    for line in lines:
        console.print(line, markup=False, highlight=False)
    console.print(f"[green]✓[/] report written to {path}")
    if open_browser:
        import webbrowser

        if not webbrowser.open(path.resolve().as_uri()):
            console.print(f"could not open a browser; open {path.resolve().as_uri()} yourself")


from .agent import agent_cmd, explore_cmd, serve_cmd  # noqa: E402
from .evaluate import evaluate_cmd, experiment_cmd, sweep_cmd  # noqa: E402  (sub-apps and commands in their own modules; import nothing heavy)
from .graders import graders_app  # noqa: E402
from .methods import diff_cmd; app.command("diff")(diff_cmd)  # noqa: E402,E702  (difflens diff: other methods)
from .organism import organism_app  # noqa: E402

app.command("evaluate")(evaluate_cmd)
app.command("agent")(agent_cmd)
app.command("serve")(serve_cmd)
app.command("explore")(explore_cmd)
app.command("experiment")(experiment_cmd)
app.command("sweep")(sweep_cmd)
app.add_typer(organism_app, name="organism", help="model organisms: list, show, train, ffa")
app.add_typer(graders_app, name="graders", help="graders: check them against labelled cases")


def main() -> None:  # pragma: no cover
    app()
