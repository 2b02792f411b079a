"""``difflens diff``: diffing methods beside ADL (diff mining, per-token KL and activation differences)
in one shared pass over the data. Every option is checked before a model is loaded."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer
from rich.table import Table

from ..errors import ConfigError, DifflensError
from .options import (BASE_DEVICE, DEVICE, DEVICE_MAP, DTYPE, FT_DEVICE, MAX_MEMORY, console, fail, pair_loading,
                      validation_error)

# config field -> the option that sets it (for one-line errors that name the option)
_FLAGS = {"samples": "--samples", "tokens": "--tokens", "batch_size": "--batch-size",
          "checkpoint_every": "--checkpoint-every", "top_k": "--top-k", "top_n": "--top-n",
          "layer": "--layer", "skip_positions": "--skip-positions", "dataset": "--dataset", "seed": "--seed"}


def _config(cls: type, flags: dict[str, str] | None = None, **values: Any) -> Any:
    """``cls(**values)``, a pydantic validation error turned into one line naming the option."""
    from pydantic import ValidationError

    try:
        return cls(**values)
    except ValidationError as e:
        raise validation_error(e, flags or _FLAGS) from None


def _layer(value: Optional[str], flag: str) -> Optional[float | int]:
    if value is None:
        return None
    try:
        return float(value) if "." in value else int(value)
    except ValueError:
        raise ConfigError(f"{flag}: '{value}' is neither a layer index nor a relative depth like 0.5.") from None


def _pair_specs(run: Path, base: Optional[str], finetuned: Optional[str]) -> tuple[str, str]:
    """The pair to diff: the options, or the run directory's collected pair."""
    from ..rundir.layout import RunLayout, read_json

    if base and finetuned:
        return base, finetuned
    manifest = RunLayout(run).manifest
    if not manifest.exists():
        raise ConfigError(f"give --base and --finetuned ({run} is not a collected run: it has no manifest.json "
                          "to take the pair from).")
    models = read_json(manifest).get("models", {})
    try:
        return base or models["base"]["spec"], finetuned or models["finetuned"]["spec"]
    except KeyError:
        raise ConfigError(f"{manifest} names no model pair; give --base and --finetuned.") from None


def diff_cmd(
    run: Path = typer.Argument(..., help="run directory: a collected run (its pair is the default) or a new one"),
    base: Optional[str] = typer.Option(None, "--base", help="base model (default: the run's)"),
    finetuned: Optional[str] = typer.Option(None, "--finetuned", help="finetuned model (default: the run's)"),
    methods: str = typer.Option("mining,kl", "--methods", help="comma-separated: mining, kl"),
    dataset: str = typer.Option("wiki", "--dataset", help="wiki, chat, a local file, or hf:NAME"),
    samples: int = typer.Option(2000, "--samples", help="N samples"),
    tokens: int = typer.Option(64, "--tokens", help="T positions read per sample"),
    top_k: int = typer.Option(100, "--top-k", help="mining: K of the top-K occurrence count"),
    top_n: int = typer.Option(100, "--top-n", help="mining: ids kept per ranking"),
    lens_layer: Optional[str] = typer.Option(None, "--lens-layer", help="mining through the logit lens at this "
                                             "layer (index or relative depth; default: the final logits)"),
    layer: str = typer.Option("0.5", "--layer", help="kl: layer ℓ of the activation differences"),
    skip_positions: int = typer.Option(1, "--skip-positions", help="kl: first positions of each sample left out "
                                       "(position 0 is the attention sink, its activation norms dwarf the rest)"),
    show: int = typer.Option(15, "--show", help="tokens and contexts printed per ranking"),
    batch_size: int = typer.Option(8, "--batch-size"),
    checkpoint_every: int = typer.Option(25, "--checkpoint-every", help="batches between checkpoints"),
    seed: int = typer.Option(0, "--seed"),
    text_field: str = typer.Option("text", "--text-field", help="column of local/hub datasets"),
    device: str = DEVICE, dtype: str = DTYPE, device_map: Optional[str] = DEVICE_MAP,
    max_memory: Optional[str] = MAX_MEMORY, base_device: Optional[str] = BASE_DEVICE,
    ft_device: Optional[str] = FT_DEVICE,
) -> None:
    """Diff mining and per-token KL / activation differences over N × T tokens, in one resumable pass."""
    from ..methods import KLConfig, MiningConfig, PassConfig, make_method
    from ..methods.driver import check_inputs, run_methods
    from ..rundir.layout import RunLayout

    try:
        names = [x.strip() for x in methods.split(",") if x.strip()]
        cfg = _config(PassConfig, dataset=dataset, samples=samples, tokens=tokens, seed=seed, batch_size=batch_size,
                      checkpoint_every=checkpoint_every, text_field=text_field)
        chosen = []
        for name in names:
            if name == "mining":
                opts = _config(MiningConfig, {**_FLAGS, "layer": "--lens-layer"}, top_k=top_k, top_n=top_n,
                               layer=_layer(lens_layer, "--lens-layer"))
            elif name == "kl":
                opts = _config(KLConfig, layer=_layer(layer, "--layer"), skip_positions=skip_positions)
            else:
                opts = None
            chosen.append(make_method(name, config=opts))
        if show < 0:
            raise ConfigError(f"--show: must be ≥ 0 (got {show}).")
        loading = pair_loading(dtype=dtype, device=device, device_map=device_map, max_memory=max_memory,
                               base_device=base_device, ft_device=ft_device)
        base_spec, ft_spec = _pair_specs(run, base, finetuned)
        check_inputs(base_spec, ft_spec, chosen, cfg)  # tokenizers and data only: before any model loads
        from ..models.pair import load_pair

        pair = load_pair(base_spec, ft_spec, **loading)
        results = run_methods(pair, RunLayout(run), chosen, cfg)
        _print(results, show, RunLayout(run), cfg.dataset)
    except DifflensError as e:
        fail(e)


def _print(results: dict[str, Any], show: int, layout: Any, dataset: str) -> None:
    mining = results.get("mining")
    if mining is not None and show:
        where = "final logits" if mining.layer is None else f"logit lens at layer {mining.layer}"
        table = Table("#", "top-K of ft − base", "in top-K", "> 0", "mean Δ", "ft alone (baseline)", "in top-K",
                      title=f"diff mining: {mining.n_samples} samples × {mining.tokens} tokens, K={mining.top_k}, "
                            f"{where}")
        for i, (e, b) in enumerate(zip(mining.rankings["top_k"][:show], mining.rankings["ft_top_k"][:show])):
            table.add_row(str(i + 1), repr(e.token), f"{e.top_k_fraction:.0%}", f"{e.positive_fraction:.0%}",
                          f"{e.mean_diff:+.2f}", repr(b.token), f"{b.ft_top_k_count / max(1, mining.n_positions):.0%}")
        console.print(table)
    kl = results.get("kl")
    if kl is not None:
        from ..methods import open_examples

        with open_examples(layout, dataset) as store:  # the top contexts, paged from the store
            top = {stat: store.top(stat, 0, show) for stat in store.ranked_stats()}
        names = {"kl": "KL(P_ft‖P_base)", "norm": f"‖h_ft − h_base‖ (layer {kl.layer})",
                 "cos": f"cosine distance (layer {kl.layer})"}
        for s, st in kl.stats.items():
            console.print(f"[bold]{names[s]}[/]: mean {st.mean:.4g} ± {st.std:.3g}, max {st.max:.4g} over "
                          f"{st.count} tokens (positions ≥ {kl.skip_positions})", soft_wrap=True)
            for e in top[f"{s}_max"]:
                console.print(f"  {e.value:.4g}  sample {e.sample}: {e.marked('[[', ']]', context=70)!r}",
                              markup=False, highlight=False, soft_wrap=True)
    console.print(f"results: {layout.methods_dir(dataset)}")
