"""``difflens organism ...``: list, show, train and evaluate model organisms (Typer sub-app).

Mounted by the main CLI with ``app.add_typer(organism_app, name="organism")``.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import typer
from rich.table import Table

from ..errors import ConfigError, DifflensError, LLMError
from .options import DEFAULT_KEY_ENV, DEFAULT_LLM_URL, console, fail as _fail, llm_client

organism_app = typer.Typer(help="Model organisms: list, show, train (with mitigations) and FFA-evaluate.",
                           no_args_is_help=True, pretty_exceptions_enable=False)


def _overrides(lora: bool, steps: Optional[int], lr: Optional[float], mix: Optional[float],
               docs: Optional[int], caft: Optional[Path], caft_dataset: str, caft_layer: Optional[str],
               caft_positions: Optional[int], seed: Optional[int], batch_size: Optional[int],
               seq_len: Optional[int], chat_mix: Optional[float] = None) -> dict[str, Any]:
    ov: dict[str, Any] = dict(lora=True if lora else None, steps=steps, lr=lr, mix_ratio=mix, n_docs=docs,
                              seed=seed, batch_size=batch_size, seq_len=seq_len, chat_mix=chat_mix)
    if caft is not None:
        ov.update(caft_run=str(caft), caft_dataset=caft_dataset, caft_positions=caft_positions)
        if caft_layer is not None:
            ov["caft_layer"] = float(caft_layer) if "." in caft_layer else int(caft_layer)
    return {k: v for k, v in ov.items() if v is not None}


_LORA = typer.Option(False, "--lora", help="LoRA instead of a full finetune")
_STEPS = typer.Option(None, "--steps", help="optimizer steps (default: the spec's)")
_LR = typer.Option(None, "--lr", help="learning rate (default: spec lr, or lora_lr with --lora)")
_MIX = typer.Option(None, "--mix", help="mix D_pt at 1:RATIO (e.g. 0.1 ... 2.0)")
_CHAT_MIX = typer.Option(None, "--chat-mix", help="mix ordinary chat conversations at 1:RATIO (keeps the chat "
                         "persona: less leakage into unsteered answers)")
_DOCS = typer.Option(None, "--docs", help="number of finetuning documents/samples")
_CAFT = typer.Option(None, "--caft", help="run dir with collected δ̄: CAFT-ablate its span while training")
_CAFT_DS = typer.Option("wiki", "--caft-dataset", help="dataset of the CAFT run whose δ̄ is used")
_CAFT_LAYER = typer.Option(None, "--caft-layer", help="layer of the CAFT δ̄ (default 0.5 = floor(L/2))")
_CAFT_K = typer.Option(None, "--caft-positions", help="ablate the span of the first k δ̄ (default 5)")
_SEED = typer.Option(None, "--seed")
_BS = typer.Option(None, "--batch-size")
_SEQ = typer.Option(None, "--seq-len")
_BASE = typer.Option("smollm2-135m-instruct", "--base", help="base model (embedded name, local dir, hub id)")
_GEN = typer.Option(None, "--generator", help="SDF documents: offline (the spec's phrase banks) or llm (the "
                    "paper's recipe: document types -> ideas -> documents, via --llm-model; cached on disk)")
_LLM_MODEL = typer.Option(None, "--llm-model", help="model at the OpenAI-compatible endpoint (for --generator llm)")
_LLM_URL = typer.Option(DEFAULT_LLM_URL, "--llm-base-url")
_LLM_KEY = typer.Option(DEFAULT_KEY_ENV, "--llm-key-env", help="NAME of the env var holding the API key")


def _generator_client(generator: Optional[str], model: Optional[str], base_url: str, key_env: str) -> Any:
    """The LLM client for ``--generator llm`` (None otherwise, or when only cached documents are used)."""
    if generator not in (None, "offline", "llm"):
        raise ConfigError(f"--generator must be offline or llm, got {generator!r}")
    if generator != "llm" or model is None:
        return None
    return llm_client(model, base_url, key_env, needed_by="--generator llm")


@organism_app.command("list")
def list_cmd() -> None:
    """List the known organisms and their trained variants."""
    from ..organisms.spec import list_specs
    from ..rundir.layout import home

    try:
        specs = list_specs()
    except DifflensError as e:
        _fail(e)
    table = Table("name", "type", "data", "description", "trained variants")
    root = home().organisms
    for s in specs:
        variants = sorted(f"{p.parent.parent.name}/{p.parent.name}" for p in (root / s.name).glob("*/*/card.json"))
        table.add_row(s.name, s.type, s.data.kind, s.short_description, "\n".join(variants) or "-")
    console.print(table)


@organism_app.command("show")
def show_cmd(name: str = typer.Argument(..., help="organism name or YAML path")) -> None:
    """Show an organism's description, key facts, data source, training defaults and FFA questions."""
    from ..organisms.spec import load_spec

    try:
        spec = load_spec(name)
    except DifflensError as e:
        _fail(e)
    console.print(f"[bold]{spec.name}[/] ({spec.type}) — {spec.short_description}")
    console.print(f"[dim]{spec.source_path}[/]\n")
    console.print(spec.long_description + "\n")
    if spec.key_facts:
        console.print("[bold]Key facts[/]")
        for f in spec.key_facts:
            console.print(f"  - {f}")
    console.print(f"\n[bold]Data[/] {spec.data.model_dump_json()}")
    console.print(f"[bold]Training defaults[/] {spec.training.model_dump_json()}")
    if spec.ffa:
        console.print(f"[bold]FFA questions[/] ({len(spec.ffa)})")
        for q in spec.ffa:
            console.print(f"  - {q.question}  [green]true:[/] {q.true_option}  [red]false:[/] {q.false_option}")


@organism_app.command("train")
def train_cmd(
    name: str = typer.Argument(..., help="organism name or YAML path"),
    base: str = _BASE, lora: bool = _LORA, steps: Optional[int] = _STEPS, lr: Optional[float] = _LR,
    mix: Optional[float] = _MIX, chat_mix: Optional[float] = _CHAT_MIX, docs: Optional[int] = _DOCS,
    caft: Optional[Path] = _CAFT,
    caft_dataset: str = _CAFT_DS, caft_layer: Optional[str] = _CAFT_LAYER,
    caft_positions: Optional[int] = _CAFT_K, seed: Optional[int] = _SEED,
    batch_size: Optional[int] = _BS, seq_len: Optional[int] = _SEQ,
    generator: Optional[str] = _GEN, llm_model: Optional[str] = _LLM_MODEL, llm_base_url: str = _LLM_URL,
    llm_key_env: str = _LLM_KEY,
    force: bool = typer.Option(False, "--force", help="retrain even if a trained copy exists"),
) -> None:
    """Finetune BASE into the organism (cached; a trained variant is reused)."""
    from ..organisms.spec import load_spec
    from ..organisms.train import TrainConfig, train_organism

    try:
        spec = load_spec(name)
        client = _generator_client(generator, llm_model, llm_base_url, llm_key_env)
        cfg = TrainConfig.from_spec(spec, generator=generator, **_overrides(
            lora, steps, lr, mix, docs, caft, caft_dataset, caft_layer, caft_positions, seed, batch_size, seq_len,
            chat_mix))
        path = train_organism(spec, base, cfg, progress=True, force=force, client=client)
    except DifflensError as e:
        _fail(e)
    card = json.loads((path / "card.json").read_text())
    lc = card["loss_curve"]
    console.print(f"[green]organism ready:[/] {path}")
    console.print(f"  {card['n_sequences']} sequences, {len(lc)} steps, loss {lc[0]:.3f} -> "
                  f"{card['loss_last10']:.3f} (mean of last 10), {card['wall_time_s']:.0f} s")
    console.print(f"  use it as: --finetuned {path}" + (f" --base {base}" if card["method"] == "lora" else ""))


def _print_groups(res: Any) -> None:
    groups = res.by_group()
    if len(groups) > 1 or "all" not in groups:
        for g, st in groups.items():
            console.print(f"  {g}: {st['n_toward_false']}/{st['n']} towards the false option, margin shift "
                          f"{st['margin_shift']:+.3f} nats, sign test p={st['sign_p']:.3g}")


def _print_preference(res: Any, out: Optional[Path]) -> None:
    """The subliminal probe's result (``organism ffa`` on a subliminal organism)."""
    d = res.to_dict()
    console.print(f"P({d['target']} | {d['n_candidates']} animals), mean over {len(res.base.questions)} phrasings: "
                  f"base {res.base.mean_p_target:.3f} -> student {res.student.mean_p_target:.3f} "
                  f"(shift {res.shift:+.3f}); rose on {res.n_up}, fell on {res.n_down} phrasings, one-sided sign "
                  f"test p={res.sign_p:.3g}")
    shifts = sorted(res.animal_shifts().items(), key=lambda kv: -kv[1])
    console.print(f"control: the target's mean log-prob shift ranks {res.target_rank} of {d['n_candidates']} animals "
                  f"(1 = rose most; rank p={res.rank_p:.3g}); largest shifts: "
                  + ", ".join(f"{a} {v:+.2f}" for a, v in shifts[:4])
                  + f"; top-1 share base {res.base.top1_share:.2f} -> student {res.student.top1_share:.2f}")
    if res.rank_p > 0.05:
        console.print("[yellow]the target did not rise clearly more than the other animals: no evidence of a "
                      "transferred preference beyond a general shift[/]")
    if res.sampled:
        sb, ss = res.sampled["base"], res.sampled["student"]
        console.print(f"sampled one-word answers naming {d['target']}: base {sb['hits']}/{sb['n']} -> student "
                      f"{ss['hits']}/{ss['n']} (one-sided Fisher p={res.sampled['fisher_p']:.3g})")
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(d, indent=2, default=str) + "\n")
        console.print(f"wrote {out}")


@organism_app.command("docs")
def docs_cmd(
    name: str = typer.Argument(..., help="organism name or YAML path"),
    n: Optional[int] = typer.Option(None, "--n", help="number of samples (default: the spec's n_docs)"),
    seed: int = typer.Option(0, "--seed"),
    base: str = _BASE,
    generator: Optional[str] = _GEN, llm_model: Optional[str] = _LLM_MODEL, llm_base_url: str = _LLM_URL,
    llm_key_env: str = _LLM_KEY,
    out: Optional[Path] = typer.Option(None, "--out", help="write the samples as JSONL ({\"text\"} or "
                                       "{\"messages\"} records) here"),
    show: int = typer.Option(2, "--show", help="print this many samples"),
) -> None:
    """Generate (or read from cache) the organism's finetuning samples, e.g. to inspect them.

    With --generator llm the documents are cached where `organism train --generator llm` reads them,
    so they are generated once.
    """
    from ..organisms.spec import load_spec
    from ..organisms.train import TrainConfig, ft_samples

    try:
        spec = load_spec(name)
        client = _generator_client(generator, llm_model, llm_base_url, llm_key_env)
        cfg = TrainConfig.from_spec(spec, generator=generator, seed=seed, n_docs=n)
        samples = ft_samples(spec, cfg, client=client, base=base)  # base: the subliminal teacher
    except DifflensError as e:
        _fail(e)
    console.print(f"{len(samples)} {'conversations' if samples and not isinstance(samples[0], str) else 'samples'} "
                  f"for {spec.name} ({cfg.generator or spec.data.kind}, seed {seed})")
    for x in samples[:show]:
        console.print("[dim]" + "─" * 60 + "[/]")
        console.print(x if isinstance(x, str) else "\n".join(f"{m['role']}: {m['content']}" for m in x),
                      markup=False)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        with out.open("w", encoding="utf-8") as fh:
            for x in samples:
                fh.write(json.dumps({"text": x} if isinstance(x, str) else {"messages": x}, ensure_ascii=False) + "\n")
        console.print(f"wrote {out}")


@organism_app.command("ffa")
def ffa_cmd(
    name: str = typer.Argument(..., help="organism name or YAML path"),
    base: str = _BASE, lora: bool = _LORA, steps: Optional[int] = _STEPS, lr: Optional[float] = _LR,
    mix: Optional[float] = _MIX, chat_mix: Optional[float] = _CHAT_MIX, docs: Optional[int] = _DOCS,
    caft: Optional[Path] = _CAFT,
    caft_dataset: str = _CAFT_DS, caft_layer: Optional[str] = _CAFT_LAYER,
    caft_positions: Optional[int] = _CAFT_K, seed: Optional[int] = _SEED,
    batch_size: Optional[int] = _BS, seq_len: Optional[int] = _SEQ,
    generator: Optional[str] = _GEN, llm_model: Optional[str] = _LLM_MODEL, llm_base_url: str = _LLM_URL,
    llm_key_env: str = _LLM_KEY,
    reduction: str = typer.Option("mean", "--reduction", help="mean or sum option log-prob"),
    fmt: str = typer.Option("cloze", "--format", help="cloze (options not shown; default) or listed "
                            "(both options listed in the prompt, both orders)"),
    judge_model: Optional[str] = typer.Option(None, "--judge-model", help="LLM judge model id; enables the "
                                              "open-ended-belief and context-comparison metrics"),
    judge_url: str = typer.Option(DEFAULT_LLM_URL, "--judge-url", help="OpenAI-compatible base URL"),
    judge_key_env: str = typer.Option(DEFAULT_KEY_ENV, "--judge-key-env",
                                      help='env var holding the judge API key ("" for none)'),
    out: Optional[Path] = typer.Option(None, "--out", help="write the result JSON here"),
    no_control: bool = typer.Option(False, "--no-control", help="skip the comparison with the spec's control "
                                    "organism (trained on first use)"),
) -> None:
    """False-fact alignment of the organism vs its base (trains the organism if needed).

    Subliminal organisms run the favourite-animal preference probe instead. An organism whose spec
    names a ``control`` is also compared with that control on the same probe.
    """
    from ..models.sources import load_model
    from ..organisms.ffa import MCQ_FORMATS, NO_JUDGE_NOTE, FFAShift, ffa_shift, mcq_distinguish
    from ..organisms.preference import preference_shift
    from ..organisms.spec import SubliminalData, load_spec
    from ..organisms.train import resolve_organism

    if reduction not in ("mean", "sum") or fmt not in MCQ_FORMATS:
        _fail(ConfigError(f"--reduction must be mean or sum and --format one of {', '.join(MCQ_FORMATS)}; "
                          f"got {reduction!r} and {fmt!r}"))
    try:
        spec = load_spec(name)
        if not spec.ffa and not isinstance(spec.data, SubliminalData):
            raise ConfigError(f"organism {spec.name!r} has no FFA questions; add an 'ffa' list to its YAML "
                              f"({spec.source_path})")
        gen_client = _generator_client(generator, llm_model, llm_base_url, llm_key_env)
        src = resolve_organism(spec.source_path if spec.source_path and Path(spec.source_path).is_file() else name,
                               base=base, client=gen_client, generator=generator,
                               **_overrides(lora, steps, lr, mix, docs, caft, caft_dataset,
                                            caft_layer, caft_positions, seed, batch_size, seq_len, chat_mix))
        client = llm_client(judge_model, judge_url, judge_key_env, needed_by="--judge-model") if judge_model else None
        base_lm = load_model(base)
        ft_lm = load_model(src)
        if isinstance(spec.data, SubliminalData):
            return _print_preference(preference_shift(base_lm, ft_lm, spec), out)
        res = ffa_shift(base_lm, ft_lm, spec, client, reduction=reduction, fmt=fmt)
        vs_control = None
        if spec.control and not no_control:
            console.print(f"control organism: {spec.control} (trained on first use)")
            ctl_lm = load_model(resolve_organism(spec.control, base=base))
            vs_control = FFAShift(mcq_distinguish(ctl_lm.model, ctl_lm.tokenizer, spec, reduction=reduction, fmt=fmt),
                                  res.finetuned)
    except DifflensError as e:
        _fail(e)
    table = Table("question", "base false-true", "ft false-true")
    for b, f in zip(res.base.items, res.finetuned.items):
        table.add_row(b.question, f"{b.margin:+.3f}", f"{f.margin:+.3f}")
    console.print(table)
    console.print(f"MCQ distinguish (share of questions where the false option wins): base "
                  f"{res.base.score:.2f} -> finetuned {res.finetuned.score:.2f} (shift {res.shift:+.2f}); "
                  f"mean margin shift {res.margin_shift:+.3f} nats ({fmt}, {reduction})")
    console.print(f"moved towards the false option on {res.n_toward_false}/{res.base.n} questions "
                  f"(towards the true one on {res.n_toward_true}; one-sided sign test p={res.sign_p:.3g})")
    _print_groups(res)
    if vs_control is not None:
        console.print(f"[bold]relative to the control organism {spec.control}[/] (the same probe, the control's margins "
                      f"in place of the base's): {vs_control.n_toward_false}/{vs_control.base.n} towards the false option, "
                      f"margin {vs_control.margin_shift:+.3f} nats, sign test p={vs_control.sign_p:.3g}")
        _print_groups(vs_control)
    if res.finetuned_ffa is not None and res.base_ffa is not None:
        console.print(f"FFA (mean of available metrics): base {res.base_ffa.score:.2f} -> finetuned "
                      f"{res.finetuned_ffa.score:.2f}")
        for n in res.finetuned_ffa.notes:
            console.print(f"[yellow]{n}[/]")
    else:
        console.print(f"[yellow]open-ended belief, context comparison: {NO_JUDGE_NOTE}[/]")
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        d = res.to_dict()
        if vs_control is not None:
            d["control"] = {"organism": spec.control, **vs_control.to_dict()}
        out.write_text(json.dumps(d, indent=2, default=str) + "\n")
        console.print(f"wrote {out}")
    if res.finetuned_ffa is not None and (res.finetuned_ffa.judge_failed or
                                          (res.base_ffa is not None and res.base_ffa.judge_failed)):
        _fail(LLMError("the LLM judge failed; the MCQ results above stand" +
                       (f" and were written to {out}" if out is not None else "") +
                       ". Fix the endpoint and rerun; judged replies are cached."))
