"""Logit-difference amplification: sampling from ``l_ft + β·(l_ft − l_base)``.

What a finetune adds to the base model, exaggerated until it shows in plain text: at every step
both models read the same context, each through its own KV cache
(:class:`transformers.DynamicCache`), and the next token is drawn from
``softmax((l_ft + β·(l_ft − l_base)) / T)`` over the pair's shared vocabulary. β = 0 is the
finetuned model alone, β = −1 the base model alone. Works for any pair: two full models, or an
adapter toggled on one module (:meth:`~difflens.models.pair.ModelPair.side`).

Sampling (:func:`amplified_generate`) follows the steering stage's generations: chat-formatted
prompts, left-padded, one ``torch.manual_seed(seed)`` per generation call, ``torch.multinomial``
on the softmax at temperature T (no top-k / top-p), a row that wrote an end-of-sequence token
padded from then on. The steps are the ones ``model.generate(do_sample=True, top_k=0, top_p=1.0)``
takes, so at β = 0 a call gives the tokens ``generate`` gives for the finetuned model on the same
batch and seed (tests/methods/test_amplify.py).

Choosing β (:func:`run_amplify`) uses the steering stage's coherence bar
(``difflens.adl.steering.required_coherent``, the same rule in :func:`required_coherent`): the
coherence grader is calibrated on the finetuned model's unamplified answers (offline grader), each
threshold prompt's bar is ``ceil(min_coherent · pass rate)`` of that prompt's unamplified pass
rate (the paper's 8 of 10 when every unamplified sample passes), and a β is coherent when the
majority of the threshold prompts reach their bar with ``search_samples`` amplified samples
(steering averages the three prompts' thresholds; on a grid the median prompt is the nearest
thing). Every β of the grid is sampled with the same seeds (common random numbers: verdicts differ
by β, not by the draw), and the chosen β is the largest coherent one, a lone verdict against its
neighbours outvoted the way the steering search narrows its bracket (:func:`choose_beta`: the split
with the fewest disagreeing verdicts, the lower on ties). The final samples — amplified at
the chosen β, the finetuned model alone (β = 0) and the base model alone — answer the same prompts
with the same seeds and batches, so each amplified sample has an unamplified twin that differs only
by β. When no β of the grid is coherent, β = 0 is chosen and the amplified samples are the
finetuned model's.

Artifacts (:class:`~difflens.rundir.layout.RunLayout`): ``methods/<dataset>/amplify.json``
(:class:`AmplifyResult`), ``amplify.samples.jsonl`` (:class:`AmplifySample` per line), and while
it runs ``amplify.partial.json`` (finished generation calls; a killed run continues there). A
result whose fingerprint (pair, config, grader) matches is reused. A control pair (``control``,
e.g. ``noise``) writes below ``methods/<dataset>/control-<name>/``.

Diffing methods sit below ADL (``difflens.adl`` builds on them), so the steering stage's prompts
and its bar are repeated here, not imported; tests/methods/test_amplify.py keeps them equal.
"""
from __future__ import annotations

import inspect
import math
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Literal, Sequence

import torch
from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator
from rich.console import Console

from ..adl.steering import STEERING_PROMPTS, THRESHOLD_PROMPTS, narrow, required_coherent
from ..errors import ConfigError, RunDirError
from ..files import atomic_write_text, read_json, write_json
from ..graders import grader_identity
from ..models.decoding import cache_kwarg as _cache_kwarg
from ..models.decoding import eos_ids as _eos_ids
from ..models.arch import unwrap
from ..models.pair import ModelPair
from ..models.packed import with_kept_packs
from ..models.tokens import chat_prompt_ids, pad_id, pad_left
from ..rundir.artifacts import load_jsonl, save_jsonl
from ..rundir.layout import RunLayout, fingerprint
from .base import MethodResult
from .driver import _Reporter, check_run_pair

__all__ = ["AmplifyConfig", "AmplifyResult", "AmplifySample", "BetaVerdict", "GenerationCount", "GENERATING",
           "DEFAULT_BETAS", "STEERING_PROMPTS", "THRESHOLD_PROMPTS", "amplified_generate", "run_amplify",
           "load_amplify", "load_samples", "required_coherent", "choose_beta"]

METHOD = "amplify"
VERSION = 1  # bump when what a (pair, config, grader) gives changes: earlier results then recompute
DEFAULT_BETAS: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0, 8.0)
Role = Literal["amplified", "ft", "base"]

# seed offsets of the generation calls (the final samples use the steering stage's +17, the
# calibration its +99): chunk c of a job draws with torch.manual_seed(cfg.seed + offset + c)
_SEED_FINAL, _SEED_CALIBRATION, _SEED_GRID = 17, 99, 1000


class AmplifyConfig(BaseModel):
    """Options of logit-difference amplification. The coherence bar's options (``threshold_prompts``,
    ``search_samples``, ``min_coherent``, ``coherence_reference``, ``search_temperature``) and the
    final samples' (``prompts``, ``samples``, ``temperature``, ``max_new_tokens``) default to the
    steering stage's (``difflens.adl.steering.SteeringConfig``). ``batch_size``: rows per
    generation call; it changes which random numbers a row draws, so it is part of the fingerprint."""

    betas: list[float] = Field(default_factory=lambda: list(DEFAULT_BETAS))
    prompts: list[str] = Field(default_factory=lambda: list(STEERING_PROMPTS))
    samples: int = Field(5, ge=1)  # final samples per prompt, for each of amplified / ft / base
    temperature: float = Field(1.1, gt=0)
    max_new_tokens: int = Field(128, ge=1)
    threshold_prompts: list[str] = Field(default_factory=lambda: list(THRESHOLD_PROMPTS))
    search_samples: int = Field(10, ge=1)  # amplified samples per threshold prompt and β
    search_temperature: float = Field(1.2, gt=0)
    min_coherent: int = Field(8, ge=1)
    coherence_reference: Literal["unsteered", "absolute"] = "unsteered"
    calibration_samples: int = Field(20, ge=1)  # unamplified samples per threshold prompt (calibration, pass rate)
    batch_size: int = Field(64, ge=1)
    seed: int = 0

    @field_validator("betas")
    @classmethod
    def _betas(cls, v: list[float]) -> list[float]:
        if not v:
            raise ValueError("give at least one β")
        bad = [b for b in v if not math.isfinite(b) or b < 0]
        if bad:
            raise ValueError("every β must be a finite number ≥ 0")
        return sorted({float(b) for b in v})

    @field_validator("prompts", "threshold_prompts")
    @classmethod
    def _prompts(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("give at least one prompt")
        if any(not p.strip() for p in v):
            raise ValueError("a prompt is empty")
        return v

    @model_validator(mode="after")
    def _bar(self) -> "AmplifyConfig":
        if self.min_coherent > self.search_samples:
            raise ValueError(f"min_coherent {self.min_coherent} is more than search_samples {self.search_samples}")
        return self

    def semantic(self) -> dict[str, Any]:
        """Every field changes the samples (the batch size too: it decides the random numbers)."""
        return self.model_dump()

    def needs(self, pass_rates: Sequence[float]) -> list[int]:
        """The bar of each threshold prompt: coherent samples of ``search_samples`` a β needs there,
        from that prompt's unamplified pass rate (:func:`required_coherent`)."""
        return [required_coherent(self, r) for r in pass_rates]  # the steering stage's rule (duck-typed config)


class BetaVerdict(BaseModel):
    """One β of the grid against the coherence bar."""

    beta: float
    n_coherent: list[int]  # per threshold prompt
    n_samples: int  # per threshold prompt
    need: list[int]  # the bar per threshold prompt
    coherent: bool  # the majority of threshold prompts reach their bar


class AmplifySample(BaseModel):
    """One generation (a line of ``amplify.samples.jsonl``)."""

    prompt: str
    text: str
    role: Role  # amplified at the chosen β, the finetuned model alone (β = 0), the base model alone
    beta: float | None  # None for the base model
    seed: int  # the torch seed of the generation call that drew it
    sample: int  # its index among the prompt's samples (the same index, seed and row in every role)


class AmplifyResult(MethodResult):
    """``n_samples``: final samples per role (prompts × samples); ``tokens``: max new tokens per
    sample; ``n_positions``: tokens sampled in all (every role, the grid and the calibration)."""

    betas: list[float]
    grid: list[BetaVerdict]
    chosen_beta: float  # 0 when no β of the grid is coherent
    any_coherent: bool
    threshold_prompts: list[str]
    unamplified_pass_rates: list[float]  # per threshold prompt, of the calibration samples
    min_coherent_per_prompt: list[int]
    calibration: dict[str, Any] | None = None  # the offline grader's calibration
    grader: str
    prompts: list[str]
    samples_per_prompt: int
    temperature: float
    search_temperature: float
    max_new_tokens: int
    samples_file: str  # beside the result
    generations: int  # rows sampled in all
    forward_passes: int  # model calls (each model's prefill and every decode step)
    forward_tokens: int  # token positions those calls computed (padding included)

    @property
    def beta(self) -> float:
        """The chosen β (alias of :attr:`chosen_beta`)."""
        return self.chosen_beta


@dataclass
class GenerationCount:
    """What sampling cost: rows, model calls, token positions computed, tokens sampled."""

    generations: int = 0
    forward_passes: int = 0
    forward_tokens: int = 0
    generated_tokens: int = 0


# ============================================================================================
# Sampling
# ============================================================================================


def encode_prompts(pair: ModelPair, prompts: Sequence[str], side: str = "ft") -> tuple[torch.Tensor, torch.Tensor]:
    """Chat-formatted prompts as a left-padded batch and its attention mask on ``side``'s input device
    (the steering stage's prompts: :func:`~difflens.models.tokens.chat_prompt_ids`)."""
    rows = [chat_prompt_ids(pair.tokenizer, pair.ft_arch, p) for p in prompts]
    return pad_left(rows, pad_id(pair.tokenizer), pair.input_device(side))


class _Stream:
    """One model's side of a generation: its KV cache and the inputs of its next call."""

    def __init__(self, pair: ModelPair, side: str, prompts: Sequence[str]):
        from transformers import DynamicCache

        self.side = side
        self.ids, self.mask = encode_prompts(pair, prompts, side)
        # the positions generate() gives a left-padded batch (padding at 0, masked anyway)
        self.pos = (self.mask.long().cumsum(-1) - 1).masked_fill(self.mask == 0, 0)
        with pair.side(side) as model:
            inner = unwrap(model)
            self.cache = DynamicCache(config=inner.config.get_text_config(decoder=True))
            key = _cache_kwarg(model)
            if key is None:
                raise ConfigError(f"the {side} model takes no KV cache: amplification needs one.")
            self.cache_key = key
            self.keep = {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(inner.forward).parameters else {}

    def step(self, pair: ModelPair, count: GenerationCount) -> torch.Tensor:
        """The model's logits for the next token ([B, V_model], as the model computed them)."""
        with pair.side(self.side) as model:
            out = model(input_ids=self.ids, attention_mask=self.mask, position_ids=self.pos, use_cache=True,
                        **{self.cache_key: self.cache}, **self.keep)
        count.forward_passes += 1
        count.forward_tokens += int(self.ids.numel())
        return out.logits[:, -1]

    def advance(self, token: torch.Tensor) -> None:
        """Feed ``token`` [B] next: one new position per row."""
        dev = self.mask.device
        self.ids = token.to(dev)[:, None]
        self.mask = torch.cat([self.mask, self.mask.new_ones((self.mask.shape[0], 1))], dim=-1)
        self.pos = self.pos[:, -1:] + 1


@torch.no_grad()
def amplified_generate(pair: ModelPair, prompts: Sequence[str], beta: float | Sequence[float] | None = None, *,
                       side: str | None = None, temperature: float, max_new_tokens: int, seed: int,
                       stop_at_eos: bool = True, count: GenerationCount | None = None) -> list[list[int]]:
    """One sample per prompt: the new token ids of each row (up to and including its end-of-sequence
    token), all rows in one batch (left-padded chat prompts) drawn after ``torch.manual_seed(seed)``.

    ``beta`` (one for every row or one per row): from ``l_ft + β·(l_ft − l_base)``, both models
    stepping together on their own KV caches. ``side`` (``"ft"`` or ``"base"``) instead: that model
    alone. Tokens are drawn over the pair's shared vocabulary. ``stop_at_eos=False`` samples
    ``max_new_tokens`` for every row (benchmarks)."""
    if (side is None) == (beta is None):
        raise ValueError("give either beta (amplified sampling) or side (one model alone)")
    if side is not None and side not in ("base", "ft"):
        raise ValueError(f"side must be 'base' or 'ft', not {side!r}")
    if not prompts:
        return []
    count = count if count is not None else GenerationCount()
    B = len(prompts)
    sides = (side,) if side is not None else ("base", "ft")
    out_side = side or "ft"
    dev = pair.input_device(out_side)
    tok = pair.tokenizer
    if beta is not None:
        betas = [float(beta)] * B if isinstance(beta, (int, float)) else [float(b) for b in beta]
        if len(betas) != B:
            raise ValueError(f"{len(betas)} β's for {B} prompts")
        beta_t = torch.tensor(betas, dtype=torch.float32, device=dev)[:, None]
    streams = [_Stream(pair, s, prompts) for s in sides]
    with pair.side(out_side) as model:
        eos = _eos_ids(model, tok) if stop_at_eos else []
    pad = tok.pad_token_id if tok.pad_token_id is not None else (eos[0] if eos else 0)
    eos_t = torch.tensor(eos, dtype=torch.long, device=dev)
    V = pair.vocab_size
    unfinished = torch.ones(B, dtype=torch.bool, device=dev)
    check_every = 1 if dev.type == "cpu" else 8  # on an accelerator, stop checks sync: every 8 steps
    steps: list[torch.Tensor] = []
    torch.manual_seed(seed)
    for t in range(max_new_tokens):
        logits = {s.side: s.step(pair, count).to(dtype=torch.float32, device=dev, copy=True) for s in streams}
        if side is not None:
            scores = logits[side]
        else:
            lf = logits["ft"]
            lb = logits["base"]
            if lb.shape[-1] != lf.shape[-1]:  # embeddings padded differently: only the shared ids count
                lf, lb = lf[:, :V], lb[:, :V]
            scores = lf + beta_t * (lf - lb)
        if scores.shape[-1] != V:
            scores = scores[:, :V]
        if temperature != 1.0:
            scores = scores / temperature
        probs = torch.nn.functional.softmax(scores, dim=-1)
        nxt = torch.multinomial(probs, num_samples=1).squeeze(1)
        if eos:
            nxt = torch.where(unfinished, nxt, torch.full_like(nxt, pad))
            unfinished &= ~torch.isin(nxt, eos_t)
        steps.append(nxt)
        if eos and (t + 1) % check_every == 0 and not bool(unfinished.any()):
            break
        if t + 1 < max_new_tokens:
            for s in streams:
                s.advance(nxt)
    new = torch.stack(steps, dim=1).cpu().tolist()
    rows = []
    eos_set = set(eos)
    for r in new:
        end = next((i + 1 for i, x in enumerate(r) if x in eos_set), len(r))
        rows.append(r[:end])
    count.generations += B
    count.generated_tokens += sum(len(r) for r in rows)
    return rows


def decode(pair: ModelPair, rows: Sequence[Sequence[int]]) -> list[str]:
    """Texts of generated token rows (special tokens dropped, as the steering stage decodes)."""
    return list(pair.tokenizer.batch_decode([list(r) for r in rows], skip_special_tokens=True))


# ============================================================================================
# The method: calibration, β grid, final samples
# ============================================================================================


@dataclass
class _Job:
    """Samples of one role: ``n`` per prompt, rows prompt-major, in chunks of the batch size; chunk c
    drawn with seed ``seed + c``."""

    key: str
    prompts: list[str]
    n: int
    temperature: float
    seed: int
    beta: float | None = None  # amplified at β
    side: str | None = None  # one model alone

    def rows(self) -> list[tuple[int, int]]:
        return [(p, s) for p in range(len(self.prompts)) for s in range(self.n)]

    def chunks(self, batch_size: int) -> list[list[tuple[int, int]]]:
        rows = self.rows()
        return [rows[i:i + batch_size] for i in range(0, len(rows), batch_size)]


def _fingerprint(pair: ModelPair, cfg: AmplifyConfig, grader: Any, control: str | None) -> str:
    desc = pair.describe()
    inputs: dict[str, Any] = {"method": METHOD, "version": VERSION, "base": desc["base"]["fingerprint"],
                              "ft": desc["finetuned"]["fingerprint"],
                              "precision": getattr(pair, "precision", "float32"),
                              "vocab": pair.vocab_size, "config": cfg.semantic(), "grader": grader_identity(grader)}
    if control:
        inputs["control"] = control
    return fingerprint(inputs)


def check_config(cfg: AmplifyConfig) -> AmplifyConfig:
    """``cfg`` validated again (a copy made with ``model_copy(update=...)`` skips validation): a
    :class:`~difflens.errors.ConfigError` naming the option."""
    try:
        return AmplifyConfig.model_validate(cfg.model_dump())
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(x) for x in err["loc"]) or "amplify"
        msg = str(err["msg"]).removeprefix("Value error, ")
        raise ConfigError(f"amplify {where}: {msg} (got {err.get('input')!r}).") from None


def load_amplify(layout: RunLayout, dataset: str = "chat", control: str | None = None) -> AmplifyResult:
    """A finished amplification's typed result."""
    path = layout.method_result(dataset, METHOD, control)
    if not path.exists():
        how = f" --control {control}" if control else ""
        raise RunDirError(f"{path} is missing; run `difflens diff {layout.root} --methods amplify{how}`.")
    try:
        return AmplifyResult.model_validate_json(path.read_text(encoding="utf-8"))
    except ValueError as e:
        raise RunDirError(f"{path} is corrupt ({str(e).splitlines()[0]}); delete it and rerun `difflens diff`.") from e


def load_samples(layout: RunLayout, dataset: str = "chat", control: str | None = None) -> list[AmplifySample]:
    """The samples of a finished amplification (amplified, ft and base, prompt by prompt)."""
    return load_jsonl(AmplifySample, layout.method_samples(dataset, METHOD, control))


def _reusable(layout: RunLayout, dataset: str, control: str | None, fp: str) -> AmplifyResult | None:
    path = layout.method_result(dataset, METHOD, control)
    if not path.exists() or not layout.method_samples(dataset, METHOD, control).exists():
        return None
    try:
        res = AmplifyResult.model_validate_json(path.read_text(encoding="utf-8"))
    except ValueError:
        return None
    return res if res.fingerprint == fp else None


def _partial_path(layout: RunLayout, dataset: str, control: str | None):
    # the finished generation calls of an interrupted run, beside the result
    return layout.method_result(dataset, f"{METHOD}.partial", control)


def choose_beta(verdicts: Sequence[BetaVerdict]) -> float:
    """The largest coherent β of the grid (ascending β's), read exactly as the steering search narrows
    its bracket (:func:`difflens.adl.steering.narrow` with 0 counted coherent): the cut that the fewest
    verdicts contradict wins, the lowest on ties, and the β just below it is chosen (0: none). A
    monotone grid gives its largest coherent β; a lone verdict against its neighbours is outvoted."""
    if not verdicts:
        return 0.0
    betas = [float(v.beta) for v in verdicts]
    return float(narrow(0.0, betas[-1] + 1.0, betas, [bool(v.coherent) for v in verdicts])[0])


@with_kept_packs
def run_amplify(pair: ModelPair, layout: RunLayout, cfg: AmplifyConfig | None = None, grader: Any = None, *,
                dataset: str = "chat", control: str | None = None, progress: bool = True,
                console: Console | None = None, beta: float | None = None) -> AmplifyResult:
    """Logit-difference amplification of ``pair`` (see the module docstring): calibration, the β grid
    against the coherence bar, final samples at the chosen β beside the finetuned and the base
    model's. ``grader``: a coherence grader (default: the offline one, scoring under the base model).
    ``dataset`` only labels where results go (amplification reads prompts, not data); ``control``
    names a control pair (results in its directory). A finished result with the same fingerprint is
    returned without model work; an interrupted run continues from its finished generation calls.
    ``beta``: sample at this β without the grid search (a control pair amplified at the real pair's β,
    so the two differ only in the pair)."""
    cfg = check_config(cfg or AmplifyConfig())
    if beta is not None and not (math.isfinite(float(beta)) and float(beta) >= 0):
        raise ConfigError(f"a fixed β must be finite and ≥ 0 (got {beta}).")
    if control is not None and (not isinstance(control, str) or not control.strip()):
        raise ConfigError(f"a control pair needs a name (got {control!r}).")
    check_run_pair(layout, pair, ("base",) if control else ("base", "finetuned"))
    if grader is None:
        from ..graders import graders_for

        grader = graders_for(pair, "offline").coherence
    fp = _fingerprint(pair, cfg, grader, control)
    if beta is not None:
        fp = fingerprint({"search": fp, "fixed_beta": float(beta)})
    done = _reusable(layout, dataset, control, fp)
    if done is not None:
        return done

    partial_path = _partial_path(layout, dataset, control)
    partial: dict[str, Any] = {"fingerprint": fp, "jobs": {}, "grid": {}, "count": {}, "seconds": 0.0}
    if partial_path.exists():
        try:
            old = read_json(partial_path)
            if old.get("fingerprint") == fp:
                partial = old
        except RunDirError:
            pass
    count = GenerationCount(**partial["count"])
    seconds_before = float(partial["seconds"])
    t0 = time.time()
    console = console or Console(stderr=True)

    calib = _Job("calibration", list(cfg.threshold_prompts), cfg.calibration_samples, cfg.search_temperature,
                 cfg.seed + _SEED_CALIBRATION, side="ft")
    ft = _Job("ft", list(cfg.prompts), cfg.samples, cfg.temperature, cfg.seed + _SEED_FINAL, side="ft")
    base = _Job("base", list(cfg.prompts), cfg.samples, cfg.temperature, cfg.seed + _SEED_FINAL, side="base")
    grid = [_Job(f"grid:{b!r}", list(cfg.threshold_prompts), cfg.search_samples, cfg.search_temperature,
                 cfg.seed + _SEED_GRID, beta=b) for b in cfg.betas] if beta is None else []
    final_rows = len(cfg.prompts) * cfg.samples
    total = (len(calib.rows()) if beta is None else 0) + 3 * final_rows + sum(len(j.rows()) for j in grid)
    finished = sum(len(r) for texts in partial["jobs"].values() for r in texts)
    where = f" [control {control}]" if control else ""
    reporter = _Reporter(console, f"amplify {dataset}{where}", total, finished, progress)

    def save() -> None:
        partial["count"] = asdict(count)
        partial["seconds"] = seconds_before + time.time() - t0
        write_json(partial_path, partial)

    def run(job: _Job) -> list[str]:
        """The job's texts, row by row (finished chunks from the checkpoint)."""
        nonlocal finished
        got: list[list[str]] = partial["jobs"].setdefault(job.key, [])
        chunks = job.chunks(cfg.batch_size)
        for c in range(len(got), len(chunks)):
            prompts = [job.prompts[p] for p, _ in chunks[c]]
            # β = 0 is the finetuned model alone (the same tokens): no base model needed
            beta, side = (job.beta, None) if job.beta else (None, job.side or "ft")
            ids = amplified_generate(pair, prompts, beta, side=side,
                                     temperature=job.temperature, max_new_tokens=cfg.max_new_tokens,
                                     seed=job.seed + c, count=count)
            got.append(decode(pair, ids))
            finished += len(prompts)
            save()
            reporter.update(finished)
        return [t for texts in got for t in texts]

    try:
        calib_texts = run(calib) if beta is None else []  # a fixed β needs no bar
        ft_texts = run(ft)
        calibrate = getattr(grader, "calibrate", None)
        if callable(calibrate):  # as the steering stage: on the finetuned model's own unamplified answers
            calibrate(calib_texts + ft_texts)
        calibration = getattr(grader, "calibration", None) or None
        if "pass_rates" not in partial and beta is None:
            verdicts = _grade(grader, calib_texts)
            n = cfg.calibration_samples
            partial["pass_rates"] = [sum(verdicts[i * n:(i + 1) * n]) / n for i in range(len(cfg.threshold_prompts))]
            save()
        rates = [float(r) for r in partial.get("pass_rates", [])]
        needs = cfg.needs(rates)
        verdicts_out = []
        for job in grid:
            texts = run(job)
            if job.key not in partial["grid"]:
                ok = _grade(grader, texts)
                n = cfg.search_samples
                partial["grid"][job.key] = [sum(ok[i * n:(i + 1) * n]) for i in range(len(cfg.threshold_prompts))]
                save()
            n_ok = [int(x) for x in partial["grid"][job.key]]
            reached = sum(k >= need for k, need in zip(n_ok, needs))
            verdicts_out.append(BetaVerdict(beta=float(job.beta or 0.0), n_coherent=n_ok, n_samples=cfg.search_samples,
                                            need=needs, coherent=2 * reached > len(needs)))
        chosen = choose_beta(verdicts_out) if beta is None else float(beta)
        if chosen > 0:
            amp_texts = run(_Job("amplified", list(cfg.prompts), cfg.samples, cfg.temperature,
                                 cfg.seed + _SEED_FINAL, beta=chosen))
        else:  # β = 0 is the finetuned model alone: the same tokens as its samples (same prompts and seeds)
            amp_texts = ft_texts
            finished += final_rows
            reporter.update(finished)
        base_texts = run(base)
        seconds = seconds_before + time.time() - t0
    finally:
        reporter.close()

    seeds = [ft.seed + c for c, chunk in enumerate(ft.chunks(cfg.batch_size)) for _ in chunk]
    samples: list[AmplifySample] = []
    for i, (p, s) in enumerate(ft.rows()):
        for role, texts, beta in (("amplified", amp_texts, chosen), ("ft", ft_texts, 0.0), ("base", base_texts, None)):
            samples.append(AmplifySample(prompt=cfg.prompts[p], text=texts[i], role=role, beta=beta, seed=seeds[i],
                                         sample=s))
    result = AmplifyResult(
        method=METHOD, fingerprint=fp, dataset=dataset, n_samples=final_rows, tokens=cfg.max_new_tokens,
        n_positions=count.generated_tokens, models=pair.describe(), seconds=round(seconds, 2), control=control,
        betas=list(cfg.betas), grid=verdicts_out, chosen_beta=chosen,
        any_coherent=any(v.coherent for v in verdicts_out),
        threshold_prompts=list(cfg.threshold_prompts), unamplified_pass_rates=rates, min_coherent_per_prompt=needs,
        calibration=calibration, grader=str(getattr(grader, "name", type(grader).__name__)),
        prompts=list(cfg.prompts), samples_per_prompt=cfg.samples, temperature=cfg.temperature,
        search_temperature=cfg.search_temperature, max_new_tokens=cfg.max_new_tokens,
        samples_file=layout.method_samples(dataset, METHOD, control).name, generations=count.generations,
        forward_passes=count.forward_passes, forward_tokens=count.forward_tokens)
    save_jsonl(samples, layout.method_samples(dataset, METHOD, control))  # the samples first: the result commits
    atomic_write_text(layout.method_result(dataset, METHOD, control), result.model_dump_json(indent=1) + "\n")
    partial_path.unlink(missing_ok=True)
    return result


def _grade(grader: Any, texts: list[str]) -> list[bool]:
    verdicts = [bool(v) for v in grader.grade(texts)]
    if len(verdicts) != len(texts):
        raise ValueError(f"the coherence grader returned {len(verdicts)} verdicts for {len(texts)} texts")
    return verdicts


#: Methods that generate text instead of reading the shared pass (``difflens diff --methods``):
#: name -> entry point.
GENERATING: dict[str, Callable[..., AmplifyResult]] = {METHOD: run_amplify}
