"""One pass over the data that feeds every requested diffing method.

:func:`run_methods` samples N texts of T tokens from a dataset (the same sampling and BOS policy as
collection: :func:`difflens.data.corpora.sample_ids`), runs base and finetuned model over each batch
once (capturing the layers the methods need with :meth:`difflens.models.arch.ArchAdapter.capture`,
which stops after the last decoder layer: logits are the unembedding of that layer's output,
computed once per batch and shared), and hands the batch to every method. All inputs are checked
before the first forward pass. Every ``checkpoint_every`` batches the methods' running statistics
and the position in the data go to ``RUN/methods/<dataset>/partial.pt`` (and a readable
``progress.json``); a killed pass resumes from there and gives the same results as an
uninterrupted one. A method whose result exists with the same fingerprint is not recomputed.
Progress shows as a bar on a terminal and as periodic lines in a log file.

A control pair (``control``: a name such as ``noise``, for the pair of
:func:`difflens.models.noise.noise_pair`: the base model against itself with small random weight
noise) runs the same methods with every file in ``RUN/methods/<dataset>/control-<name>/``: its
results, stores, arrays, checkpoint and progress never touch the real pair's. Its fingerprints
include the control's name, its results record it (:attr:`MethodResult.control`), and only its base
model is checked against the run's collected pair (its other side differs by design).
"""
from __future__ import annotations

import os
import sys
import time
from typing import Any, Sequence

import torch
from pydantic import BaseModel, Field
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from ..data.corpora import Corpus, TokenSample, load_corpus, sample_ids
from ..errors import ConfigError, DataError, RunDirError
from ..files import atomic_write_text
from ..models.pair import ModelPair
from ..models.tokens import bos_prefix_ids, chat_bos_ids, pad_id, pad_right
from ..rundir.layout import RunLayout, fingerprint, read_json, write_json
from .base import DiffMethod, MethodResult, PairBatch, PassContext
from .kl import TokenKL
from .mining import DiffMining
from .store import ExamplesStore
from ..models.packed import with_kept_packs

__all__ = ["PassConfig", "METHODS", "make_method", "run_methods", "check_inputs", "load_result", "open_examples",
           "sample_pass"]

METHODS: dict[str, type[DiffMethod]] = {"mining": DiffMining, "kl": TokenKL}
SAMPLING = "window-from-start/v1"  # how the pass samples its T positions; bump when that changes


class PassConfig(BaseModel):
    """The shared pass: which data, how many samples N, how many positions T per sample."""

    dataset: str = "wiki"
    samples: int = Field(2000, ge=1)
    tokens: int = Field(64, ge=1, le=8192)
    seed: int = 0
    batch_size: int = Field(8, ge=1)
    checkpoint_every: int = Field(25, ge=1)
    text_field: str = "text"

    def semantic(self) -> dict[str, Any]:
        """The fields that change results (batch size and checkpointing do not)."""
        return self.model_dump(exclude={"batch_size", "checkpoint_every"})


def make_method(name: str, **options: Any) -> DiffMethod:
    """A method by name (``mining``, ``kl``) with its options."""
    if name not in METHODS:
        raise ConfigError(f"unknown method '{name}'; choose from {', '.join(METHODS)}.")
    return METHODS[name](**options)


def _decoder(tokenizer: Any):
    """Token ids -> one string each: the decoded token, else (ids that decode to nothing: padding rows
    beyond the tokenizer) its raw token or ``<id N>``."""
    def decode(ids: list[int]) -> list[str]:
        out = list(tokenizer.batch_decode([[int(i)] for i in ids]))
        for j, t in enumerate(out):
            if not t:
                raw = tokenizer.convert_ids_to_tokens(int(ids[j]))
                out[j] = raw if raw else f"<id {int(ids[j])}>"
        return out
    return decode


def sample_pass(pair: ModelPair, corpus: Corpus, cfg: PassConfig) -> TokenSample:
    """The N samples of T tokens the pass reads; a DataError when no text has T tokens."""
    arch = pair.arch
    sample = sample_ids(corpus, pair.tokenizer, n=cfg.samples, k=cfg.tokens, seed=cfg.seed, max_len=cfg.tokens,
                        bos=bos_prefix_ids(pair.tokenizer, arch), chat_bos=chat_bos_ids(pair.tokenizer, arch))
    if not sample.ids:
        what = "assistant reply" if corpus.is_chat else "text"
        raise DataError(f"--tokens {cfg.tokens} is more than dataset '{corpus.name}' allows: no {what} has "
                        f"{cfg.tokens} tokens ({sample.n_skipped} too short); use a smaller --tokens.")
    if len(sample.ids) < cfg.samples:
        print(f"warning: {corpus.name}: {cfg.samples} samples of {cfg.tokens} tokens requested, {len(sample.ids)} "
              f"usable ({sample.n_skipped} too short) — using {len(sample.ids)}", file=sys.stderr, flush=True)
    return sample


def check_inputs(base: str, finetuned: str, methods: Sequence[DiffMethod], cfg: PassConfig) -> None:
    """What can be checked before any model is loaded, from the tokenizers and the data alone: the
    dataset exists, both tokenizers map tokens to the same ids, every method's options fit the
    vocabulary, and the dataset has texts of T tokens (the exact check, with the model's BOS policy,
    runs again in :func:`run_methods` before any forward)."""
    from ..models.pair import shared_vocab
    from ..models.sources import load_tokenizer

    if not methods:
        raise ConfigError("give at least one method (--methods mining,kl).")
    corpus = load_corpus(cfg.dataset, text_field=cfg.text_field)
    base_tok = load_tokenizer(base)
    ft_tok = load_tokenizer(finetuned, base=base)
    shared_vocab(base_tok, ft_tok, base, finetuned)
    for m in methods:
        m.precheck(len(base_tok), cfg.tokens)
    probe = sample_ids(corpus, base_tok, n=1, k=cfg.tokens, seed=cfg.seed, max_len=cfg.tokens)
    if not probe.ids:
        every = sample_ids(corpus, base_tok, n=len(corpus.texts), k=1, seed=0, max_len=1 << 30)
        lengths = [len(x) - s for x, s in zip(every.ids, every.starts)]
        what = "assistant reply" if corpus.is_chat else "text"
        raise DataError(f"--tokens {cfg.tokens} is more than dataset '{corpus.name}' allows: its longest {what} has "
                        f"{max(lengths, default=0)} tokens; use a smaller --tokens.")


def check_run_pair(layout: RunLayout, pair: ModelPair, sides: Sequence[str] = ("base", "finetuned")) -> None:
    """A run directory belongs to one model pair: a collected run of another pair is refused
    (``sides``: which of the pair's sides must match the run's; a control pair's base only)."""
    if not layout.manifest.exists():
        return
    try:
        old = read_json(layout.manifest)["models"]
    except (RunDirError, KeyError, TypeError):
        return
    new = pair.describe()
    for side in sides:
        if old[side]["fingerprint"] != new[side]["fingerprint"]:
            raise RunDirError(f"{layout.root} holds results for another model pair ({side}: {old[side]['spec']}, "
                              f"fingerprint {old[side]['fingerprint']}); use a new output directory.")


def _window(h: torch.Tensor, starts: Sequence[int], T: int) -> torch.Tensor:
    """``h[b, starts[b]:starts[b] + T]`` for every row b."""
    if h.shape[1] == T and not any(starts):
        return h
    idx = torch.tensor(list(starts), device=h.device).unsqueeze(1) + torch.arange(T, device=h.device)
    return h[torch.arange(h.shape[0], device=h.device).unsqueeze(1), idx]


def _order(ids: Sequence[Sequence[int]]) -> list[int]:
    """Batching order: as sampled when all rows have one length, else by length (less padding)."""
    if len({len(r) for r in ids}) <= 1:
        return list(range(len(ids)))
    return sorted(range(len(ids)), key=lambda i: len(ids[i]))


class _Reporter:
    """A progress bar on a terminal; on a log file a line at every 10 % and at least once a minute."""

    def __init__(self, console: Console, label: str, total: int, done: int, enabled: bool):
        self.console, self.label, self.total, self.enabled = console, label, total, enabled
        self.t0, self.done0, self.last_line, self.last_step = time.time(), done, time.time(), done * 10 // max(1, total)
        self.bar: Progress | None = None
        if enabled and console.is_terminal:
            self.bar = Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                                console=console, transient=True)
            self.bar.start()
            self.task = self.bar.add_task(label, total=total, completed=done)
        elif enabled:
            self.console.print(f"{label}: {done}/{total} samples" + (" (resumed)" if done else ""),
                               markup=False, highlight=False, soft_wrap=True)

    def update(self, done: int) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(self.task, completed=done)
            return
        step = done * 10 // max(1, self.total)
        now = time.time()
        if step > self.last_step or now - self.last_line >= 60 or done >= self.total:
            rate = (done - self.done0) / max(1e-9, now - self.t0)
            left = (self.total - done) / rate if rate > 0 else float("nan")
            self.console.print(f"{self.label}: {done}/{self.total} samples ({100 * done / self.total:.0f}%), "
                               f"{rate:.1f} samples/s, ~{_dur(left)} left", markup=False, highlight=False,
                               soft_wrap=True)
            self.last_line, self.last_step = now, step

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def _dur(s: float) -> str:
    if s != s:  # nan
        return "?"
    m, sec = divmod(int(round(s)), 60)
    return f"{m}m{sec:02d}s" if m else f"{sec}s"


def _save_checkpoint(path: Any, obj: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


@with_kept_packs
def run_methods(pair: ModelPair, layout: RunLayout, methods: Sequence[DiffMethod], cfg: PassConfig, *,
                progress: bool = True, console: Console | None = None,
                stop_after_batches: int | None = None, control: str | None = None) -> dict[str, MethodResult]:
    """Run ``methods`` over one shared pass (see the module docstring); returns each method's result.

    ``control``: ``pair`` is a control pair of that name (e.g. ``noise``); everything is written to
    the control's directory (:meth:`RunLayout.methods_dir`) and only the base side is checked
    against the run's pair. ``stop_after_batches`` interrupts deliberately after that many batches
    of this call, without a checkpoint (tests of resumption: what a killed process leaves).
    """
    if control is not None and (not isinstance(control, str) or not control.strip()):
        raise ConfigError(f"a control pair needs a name (got {control!r}).")
    if not methods:
        raise ConfigError("give at least one method (--methods mining,kl).")
    names = [m.name for m in methods]
    if len(set(names)) != len(names):
        raise ConfigError(f"each method once, please (got {', '.join(names)}).")
    console = console or Console(stderr=True)
    corpus = load_corpus(cfg.dataset, text_field=cfg.text_field)
    check_run_pair(layout, pair, ("base",) if control else ("base", "finetuned"))
    sample = sample_pass(pair, corpus, cfg)
    N, T = len(sample.ids), cfg.tokens
    arch = pair.arch
    desc = pair.describe()
    common = {"base": desc["base"]["fingerprint"], "ft": desc["finetuned"]["fingerprint"], "data": corpus.content_hash,
              "sample": sample.order_hash, "n": N, "pass": cfg.semantic(), "sampling": SAMPLING,
              "precision": getattr(pair, "precision", "float32"), "vocab": pair.vocab_size}
    if control:  # (absent for the real pair: its fingerprints stay what they were)
        common["control"] = control
    results: dict[str, MethodResult] = {}
    pending: list[DiffMethod] = []
    for m in methods:  # every option is resolved and checked before any forward pass
        ctx = PassContext(dataset=cfg.dataset, tokens=T, n_samples=N, vocab_size=pair.vocab_size,
                          num_layers=arch.num_layers, resolve_layer=arch.resolve_layer,
                          decode=_decoder(pair.tokenizer),
                          store_path=layout.method_store(cfg.dataset, m.name, control),
                          arrays_path=layout.method_arrays(cfg.dataset, m.name, control))
        m.prepare(ctx)
        ctx.fingerprint = fingerprint({**common, "method": m.name, "inputs": m.fingerprint_inputs()})
        done = _finished(layout, cfg.dataset, m, ctx.fingerprint, control)
        if done is not None:
            results[m.name] = done
        else:
            pending.append(m)
    if not pending:
        return {m.name: results[m.name] for m in methods}

    pass_fp = fingerprint(sorted(m.ctx.fingerprint for m in pending))
    partial, progress_path = layout.methods_partial(cfg.dataset, control), layout.methods_progress(cfg.dataset, control)
    start, n_done, batches_done, states = 0, 0, 0, None
    if partial.exists():
        try:
            ck = torch.load(partial, weights_only=True)
        except Exception:  # noqa: BLE001 - a torn checkpoint just means: start over
            ck = {}
        if ck.get("fingerprint") == pass_fp and all(m.can_resume(int(ck["n_done"])) for m in pending):
            start, n_done, batches_done, states = int(ck["next"]), int(ck["n_done"]), int(ck["batches"]), ck["states"]
    layers = sorted(set().union(*(m.needs() for m in pending)))
    order = _order(sample.ids)
    pad = pad_id(pair.tokenizer)
    t0 = time.time()
    seconds_before = float(states.get("_seconds", 0.0)) if states else 0.0  # type: ignore[union-attr]
    pair_label = f" on control pair {control}" if control else ""  # (no brackets: the bar's label is markup)
    label = f"diff {cfg.dataset}{pair_label} ({', '.join(m.name for m in pending)})"
    reporter = _Reporter(console, label, N, n_done, progress)

    def unembed_of(side: str):
        def fn(h: torch.Tensor) -> torch.Tensor:
            # an adapter that reaches the unembedding is toggled like the forward
            with pair.side(side), torch.no_grad():
                return pair.arch_of(side).unembed(h)
        return fn

    def checkpoint(next_index: int) -> None:
        for m in pending:
            m.flush()
        st: dict[str, Any] = {m.name: m.state_dict() for m in pending}
        st["_seconds"] = seconds_before + time.time() - t0
        _save_checkpoint(partial, {"fingerprint": pass_fp, "next": next_index, "n_done": n_done,
                                   "batches": batches_done, "states": st})
        write_json(progress_path, {"fingerprint": pass_fp, "methods": [m.name for m in pending], "n_done": n_done,
                                   "n_total": N, "batches": batches_done, "seconds": round(st["_seconds"], 2),
                                   "status": "running", "updated": time.strftime("%Y-%m-%dT%H:%M:%S")})

    try:
        for m in pending:
            m.start(states[m.name] if states else None)
        this_call = 0
        for i in range(start, N, cfg.batch_size):
            members = order[i:i + cfg.batch_size]
            rows = [list(sample.ids[j]) for j in members]
            starts = [int(sample.starts[j]) for j in members]
            if len({len(r) for r in rows}) == 1:
                x, mask = torch.tensor(rows, dtype=torch.long), None
            else:
                x, mask = pad_right(rows, pad)
            hidden: dict[str, dict[int, torch.Tensor]] = {}
            for side in ("base", "ft"):
                with pair.side(side) as model:
                    hs = pair.arch_of(side).capture(model, x, layers, attention_mask=mask)
                hidden[side] = {li: _window(hs[li], starts, T) for li in layers}
            batch = PairBatch(samples=torch.tensor(members), ids=_window(x.unsqueeze(-1), starts, T).squeeze(-1),
                              rows=rows, starts=starts, hidden=hidden,
                              unembed={s: unembed_of(s) for s in ("base", "ft")}, vocab_size=pair.vocab_size,
                              num_layers=arch.num_layers)
            with torch.no_grad():
                for m in pending:
                    m.update(batch)
            del batch, hidden
            n_done += len(members)
            batches_done += 1
            this_call += 1
            reporter.update(n_done)
            nxt = i + len(members)
            if batches_done % cfg.checkpoint_every == 0 and nxt < N:
                checkpoint(nxt)
            if stop_after_batches is not None and this_call >= stop_after_batches and nxt < N:
                raise KeyboardInterrupt(f"pass stopped after {this_call} batches (test hook)")
        seconds = seconds_before + time.time() - t0
        for m in pending:
            res = m.finalize().model_copy(update={"models": desc, "seconds": round(seconds, 2), "control": control})
            atomic_write_text(layout.method_result(cfg.dataset, m.name, control), res.model_dump_json(indent=1) + "\n")
            results[m.name] = res
        partial.unlink(missing_ok=True)
        write_json(progress_path, {"fingerprint": pass_fp, "methods": [m.name for m in pending], "n_done": n_done,
                                   "n_total": N, "batches": batches_done, "seconds": round(seconds, 2),
                                   "status": "done", "updated": time.strftime("%Y-%m-%dT%H:%M:%S")})
    finally:
        reporter.close()
        for m in pending:
            m.close()
    return {m.name: results[m.name] for m in methods}


def _finished(layout: RunLayout, dataset: str, method: DiffMethod, fp: str,
              control: str | None = None) -> MethodResult | None:
    path = layout.method_result(dataset, method.name, control)
    if not path.exists():
        return None
    try:
        res = method.result_type.model_validate_json(path.read_text(encoding="utf-8"))
    except ValueError:
        return None
    if res.fingerprint != fp:
        return None
    return res if method.outputs_present() else None


def load_result(layout: RunLayout, dataset: str, method: str, control: str | None = None) -> MethodResult:
    """A finished method's typed result (``control``: on that control pair, e.g. ``noise``)."""
    if method not in METHODS:
        raise ConfigError(f"unknown method '{method}'; choose from {', '.join(METHODS)}.")
    path = layout.method_result(dataset, method, control)
    if not path.exists():
        how = f" --control {control}" if control else ""
        raise RunDirError(f"{path} is missing; run `difflens diff {layout.root} --methods {method}{how}`.")
    try:
        return METHODS[method].result_type.model_validate_json(path.read_text(encoding="utf-8"))
    except ValueError as e:
        raise RunDirError(f"{path} is corrupt ({str(e).splitlines()[0]}); delete it and rerun `difflens diff`.") from e


def open_examples(layout: RunLayout, dataset: str, control: str | None = None) -> ExamplesStore:
    """The kl method's examples store of this run, or of its control pair ``control`` (refused when
    it was written by another run)."""
    res = load_result(layout, dataset, "kl", control)
    return ExamplesStore.open(layout.method_store(dataset, "kl", control), fingerprint=res.fingerprint)
