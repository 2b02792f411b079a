"""``difflens diff``: diffing methods beside ADL (diff mining, per-token KL and activation differences)
in one shared pass over the data, and logit-difference amplification (``amplify``: samples from
l_ft + β·(l_ft − l_base)). Every option is checked before a model is loaded."""
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


CONTROLS = ("none", "noise")


def _control(control: str, scale: Optional[str], seed: Optional[int]) -> Optional[tuple[str, str | float, int]]:
    """``--control`` and its options, checked: (name, scale, seed), or None for no control."""
    from ..models.noise import parse_noise_scale

    name = control.strip().lower()
    if name not in CONTROLS:
        raise ConfigError(f"--control: unknown control '{control}'; choose from {', '.join(CONTROLS)}.")
    if name == "none":
        if scale is not None or seed is not None:
            raise ConfigError(f"{'--control-scale' if scale is not None else '--control-seed'} needs --control noise.")
        return None
    return name, parse_noise_scale("matched" if scale is None else scale), 0 if seed is None else seed


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


# amplify's config fields -> the options that set them
_AMP_FLAGS = {"betas": "--betas", "samples": "--amp-samples", "max_new_tokens": "--amp-tokens", "seed": "--seed"}


def _amplify_config(betas: str, samples: int, tokens: int, seed: int) -> Any:
    """``--betas``, ``--amp-samples``, ``--amp-tokens`` as an :class:`~difflens.methods.amplify.AmplifyConfig`."""
    from ..methods.amplify import AmplifyConfig

    grid = []
    for x in betas.split(","):
        if x.strip():
            try:
                grid.append(float(x))
            except ValueError:
                raise ConfigError(f"--betas: '{x.strip()}' is not a number.") from None
    return _config(AmplifyConfig, _AMP_FLAGS, betas=grid, samples=samples, max_new_tokens=tokens, seed=seed)


def _method_names(names: list[str]) -> list[str]:
    """The methods of the shared pass among ``names`` (generating ones such as amplify run apart)."""
    from ..methods.amplify import GENERATING
    from ..methods.driver import METHODS

    if not names:
        raise ConfigError("give at least one method (--methods mining,kl,amplify).")
    for n in names:
        if n not in METHODS and n not in GENERATING:
            raise ConfigError(f"unknown method '{n}'; choose from {', '.join([*METHODS, *GENERATING])}.")
    return [n for n in names if n not in GENERATING]


def _amplify(pair: Any, layout: Any, cfg: Any, dataset: str, control: Optional[str] = None,
             beta: Optional[float] = None) -> Any:
    """Run amplification (offline coherence grader; a control at the real pair's ``beta``, no search)
    and print its β grid and two examples."""
    from ..graders import graders_for
    from ..methods.amplify import load_samples, run_amplify

    res = run_amplify(pair, layout, cfg, graders_for(pair, "offline").coherence, dataset=dataset, control=control,
                      beta=beta)
    tag = f"control {control}: " if control else ""
    if not res.grid:
        console.print(f"{tag}amplified at β = {res.chosen_beta:g} (the run's pair's β, no search)")
    else:
        table = Table("β", *[f"{p[:28]!r}" for p in res.threshold_prompts], "coherent",
                      title=f"{tag}logit-difference amplification: coherent samples of {res.grid[0].n_samples} per "
                            f"threshold prompt (bar {', '.join(f'≥{n}' for n in res.min_coherent_per_prompt)}: "
                            f"unamplified pass rates {', '.join(f'{r:.0%}' for r in res.unamplified_pass_rates)})")
        for v in res.grid:
            mark = "✓" if v.coherent else "✗"
            table.add_row(f"{v.beta:g}", *[f"{k}/{v.n_samples}" for k in v.n_coherent],
                          mark + (" ← chosen" if v.beta == res.chosen_beta else ""))
        console.print(table)
    none = "no β of the grid is coherent" if not res.any_coherent else "no β is coherent with its neighbours"
    if res.grid:
        console.print(f"{tag}chosen β = {res.chosen_beta:g}" + ("" if res.chosen_beta else
                      f" ({none}: the amplified samples are the finetuned model's own)"), soft_wrap=True)
    samples = load_samples(layout, dataset, control)
    shown = 0
    for s in samples:
        if s.role != "amplified" or s.sample != 0 or shown >= 2:
            continue
        twin = next(t for t in samples if t.role == "ft" and t.prompt == s.prompt and t.sample == s.sample)
        console.print(f"[bold]{s.prompt}[/]", soft_wrap=True, highlight=False)
        console.print(f"  amplified (β={s.beta:g}): {s.text[:300]!r}", markup=False, highlight=False, soft_wrap=True)
        console.print(f"  finetuned alone: {twin.text[:300]!r}", markup=False, highlight=False, soft_wrap=True)
        shown += 1
    console.print(f"results: {layout.method_result(dataset, 'amplify', control)}, "
                  f"{layout.method_samples(dataset, 'amplify', control).name} ({res.seconds:.0f} s)")
    return res


def diff_cmd(
    run: Path = typer.Argument(..., help="run directory: a collected run (its pair is the default) or a new one"),
    base: Optional[str] = typer.Option(None, "--base", help="base model (default: the run's)"),
    finetuned: Optional[str] = typer.Option(None, "--finetuned", help="finetuned model (default: the run's)"),
    methods: str = typer.Option("mining,kl", "--methods", help="comma-separated: mining, kl, amplify"),
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
    betas: str = typer.Option("0.5,1,2,4,8", "--betas", help="amplify: the β grid (comma-separated, each ≥ 0); "
                              "the largest coherent β gives the final samples"),
    amp_samples: int = typer.Option(5, "--amp-samples", help="amplify: final samples per steering prompt (each "
                                    "amplified, finetuned alone and base alone)"),
    amp_tokens: int = typer.Option(128, "--amp-tokens", help="amplify: new tokens per sample"),
    show: int = typer.Option(15, "--show", help="tokens and contexts printed per ranking"),
    batch_size: int = typer.Option(8, "--batch-size"),
    checkpoint_every: int = typer.Option(25, "--checkpoint-every", help="batches between checkpoints"),
    seed: int = typer.Option(0, "--seed"),
    text_field: str = typer.Option("text", "--text-field", help="column of local/hub datasets"),
    control: str = typer.Option("none", "--control", help="after the run's pair, the same methods on a control "
                                "pair: none (the default) or noise (the base model against itself with small "
                                "random weight noise; results in methods/<dataset>/control-noise/)"),
    control_scale: Optional[str] = typer.Option(None, "--control-scale", help="noise control: 'matched' (the "
                                                "default: per tensor the norm of the finetune's change) or σ "
                                                "(noise of σ·rms(W) per tensor)"),
    control_seed: Optional[int] = typer.Option(None, "--control-seed", help="noise control: its seed (default 0)"),
    device: str = DEVICE, dtype: str = DTYPE, device_map: Optional[str] = DEVICE_MAP,
    max_memory: Optional[str] = MAX_MEMORY, base_device: Optional[str] = BASE_DEVICE,
    ft_device: Optional[str] = FT_DEVICE,
) -> None:
    """Diff mining and per-token KL / activation differences over N × T tokens, in one resumable pass;
    ``amplify``: samples from l_ft + β·(l_ft − l_base) at the largest coherent β of a grid."""
    from ..methods import KLConfig, MiningConfig, PassConfig, make_method
    from ..methods.driver import check_inputs, run_methods
    from ..rundir.layout import RunLayout

    try:
        names = [x.strip() for x in methods.split(",") if x.strip()]
        amp_cfg = _amplify_config(betas, amp_samples, amp_tokens, seed) if "amplify" in names else None
        names = _method_names(names)
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
        ctl = _control(control, control_scale, control_seed)  # (name, scale, seed) or None
        import copy

        from ..methods.driver import METHODS
        ctl_methods = [copy.deepcopy(m) for m in chosen if m.name in METHODS]  # the pass methods, fresh
        loading = pair_loading(dtype=dtype, device=device, device_map=device_map, max_memory=max_memory,
                               base_device=base_device, ft_device=ft_device)
        base_spec, ft_spec = _pair_specs(run, base, finetuned)
        if chosen:
            check_inputs(base_spec, ft_spec, chosen, cfg)  # tokenizers and data only: before any model loads
        from ..models.pair import load_pair

        pair = load_pair(base_spec, ft_spec, **loading)
        results = run_methods(pair, RunLayout(run), chosen, cfg) if chosen else {}
        if chosen:
            _print(results, show, RunLayout(run), cfg.dataset)
        amp = _amplify(pair, RunLayout(run), amp_cfg, cfg.dataset) if amp_cfg is not None else None
        if ctl is not None and (ctl_methods or amp_cfg is not None):
            from ..models.noise import noise_pair

            name, scale, ctl_seed = ctl
            ctl_pair = noise_pair(pair, scale=scale, seed=ctl_seed)
            c = ctl_pair.control
            how = "matched to the finetune's change per tensor" if c["sigma"] is None else f"σ = {c['sigma']:g}"
            console.print(f"[bold]control {name}[/]: the base model against itself + noise ({how}, seed {c['seed']}; "
                          f"‖noise‖/‖W‖ = {c['relative_norm']:.3g})", soft_wrap=True)
            if ctl_methods:
                ctl_results = run_methods(ctl_pair, RunLayout(run), ctl_methods, cfg, control=name)
                _print(ctl_results, show, RunLayout(run), cfg.dataset, control=name)
                _print_versus(results, ctl_results, name)
            if amp is not None:  # at the run's pair's β: the two differ only in the pair
                _amplify(ctl_pair, RunLayout(run), amp_cfg, cfg.dataset, control=name, beta=amp.chosen_beta)
    except DifflensError as e:
        fail(e)


def _print(results: dict[str, Any], show: int, layout: Any, dataset: str, control: Optional[str] = None) -> None:
    tag = f"control {control}: " if control else ""
    mining = results.get("mining")
    if mining is not None and show:
        where = "final logits" if mining.layer is None else f"logit lens at layer {mining.layer}"
        table = Table("#", "top-K of ft − base", "in top-K", "> 0", "mean Δ", "ft alone (baseline)", "in top-K",
                      title=f"{tag}diff mining: {mining.n_samples} samples × {mining.tokens} tokens, "
                            f"K={mining.top_k}, {where}")
        for i, (e, b) in enumerate(zip(mining.rankings["top_k"][:show], mining.rankings["ft_top_k"][:show])):
            table.add_row(str(i + 1), repr(e.token), f"{e.top_k_fraction:.0%}", f"{e.positive_fraction:.0%}",
                          f"{e.mean_diff:+.2f}", repr(b.token), f"{b.ft_top_k_count / max(1, mining.n_positions):.0%}")
        console.print(table)
    kl = results.get("kl")
    if kl is not None:
        from ..methods import open_examples

        with open_examples(layout, dataset, control) as store:  # the top contexts, paged from the store
            top = {stat: store.top(stat, 0, show) for stat in store.ranked_stats()}
        names = {"kl": "KL(P_ft‖P_base)", "norm": f"‖h_ft − h_base‖ (layer {kl.layer})",
                 "cos": f"cosine distance (layer {kl.layer})",
                 "ent": "baseline, ft alone: entropy H(P_ft) in nats"}
        for s, st in kl.stats.items():
            console.print(f"{tag}[bold]{names.get(s, s)}[/]: mean {st.mean:.4g} ± {st.std:.3g}, max {st.max:.4g} over "
                          f"{st.count} tokens (positions ≥ {kl.skip_positions})", soft_wrap=True)
            for e in top[f"{s}_max"]:
                console.print(f"  {e.value:.4g}  sample {e.sample}: {e.marked('[[', ']]', context=70)!r}",
                              markup=False, highlight=False, soft_wrap=True)
    console.print(f"results: {layout.methods_dir(dataset, control)}")


def _print_versus(real: dict[str, Any], ctl: dict[str, Any], control: str) -> None:
    """One line: the run's pair beside the control pair, statistic by statistic."""
    parts = []
    if "kl" in real and "kl" in ctl:
        for s in ("kl", "norm", "cos"):
            if s in real["kl"].stats and s in ctl["kl"].stats:
                parts.append(f"mean {s} {real['kl'].stats[s].mean:.4g} vs {ctl['kl'].stats[s].mean:.4g}")
    if "mining" in real and "mining" in ctl:
        top = [e.top_k_fraction for e in real["mining"].rankings["top_k"][:1]]
        ctop = [e.top_k_fraction for e in ctl["mining"].rankings["top_k"][:1]]
        if top and ctop:
            parts.append(f"first mined token in top-K {top[0]:.0%} vs {ctop[0]:.0%}")
    if parts:
        console.print(f"[bold]pair vs control {control}[/]: " + "; ".join(parts), soft_wrap=True)
