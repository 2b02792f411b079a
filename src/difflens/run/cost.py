"""FLOP floors of the pipeline's stages, and time estimates from a measured matmul rate.

A stage's *floor* is the matrix-multiply work it cannot avoid, from the model's shapes and the
stage's work sizes, divided by the rate this machine multiplies matrices at (:func:`matmul_rate`).
Wall time over floor says how much a stage wastes (Python overhead, small GEMMs, padding, recomputed
work). ``bench/floor.py`` prints the table; the CLI uses :func:`estimate_seconds` for "this will
take about …" lines.

Notation (per model; the two models of a pair have the same shapes): ``P(l)`` parameters of decoder
layers ``0..l-1`` (matmul weights: 2 FLOPs per parameter per token), ``P_U = V·d`` the unembedding,
``L`` layers, ``a = heads·head_dim`` the attention width. A forward of one sequence of ``T`` tokens
through ``l`` layers with logits at ``m`` positions costs

    F(T, l, m) = 2·T·P(l) + 4·a·l·T(T+1)/2 + 2·m·P_U

(QKᵀ and AV: 2·a FLOPs each per causal query-key pair). Generating ``n`` tokens after a prompt of
``p`` tokens on a KV cache: the prefill ``F(p, L, 1)`` plus ``n-1`` decode steps of
``2·P(L) + 2·P_U + 4·a·L·(context)`` each.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

__all__ = ["ModelShape", "forward_flops", "generation_flops", "decode_flops", "collect_flops", "patchscope_flops",
           "logit_lens_flops", "steer_flops", "grading_flops", "causal_flops", "methods_flops", "amplify_flops",
           "matmul_rate", "memory_rate", "kv_read_bytes", "estimate_seconds", "format_seconds", "announce",
           "rate_dtype"]


@dataclass(frozen=True)
class ModelShape:
    """What the FLOP formulas need to know about a model."""

    layer_params: tuple[int, ...]  # matmul parameters of each decoder layer
    unembed_params: int  # V · d
    attn_width: int  # heads · head_dim
    hidden: int
    kv_width: int = 0  # key/value heads · head_dim (0: attn_width, no grouped queries)

    @property
    def n_layers(self) -> int:
        return len(self.layer_params)

    def params(self, layers: int | None = None, start: int = 0) -> int:
        """Σ parameters of decoder layers ``start .. layers-1`` (None: to the last)."""
        return sum(self.layer_params[start:layers])

    @classmethod
    def of_model(cls, arch: Any, vocab: int) -> "ModelShape":
        """From an :class:`~difflens.models.arch.ArchAdapter` (weights of ≥ 2 dims: the matrices)."""
        per = tuple(sum(p.numel() for p in layer.parameters() if p.dim() >= 2) for layer in arch.layers)
        cfg = arch.config
        heads = int(getattr(cfg, "num_attention_heads"))
        kv_heads = int(getattr(cfg, "num_key_value_heads", None) or heads)
        head_dim = int(getattr(cfg, "head_dim", None) or arch.hidden_size // heads)
        return cls(per, int(vocab) * arch.hidden_size, heads * head_dim, arch.hidden_size, kv_heads * head_dim)

    @classmethod
    def of_pair(cls, pair: Any) -> "ModelShape":
        return cls.of_model(pair.arch, pair.vocab_size)


def _attn(shape: ModelShape, layers: int, tokens: int, past: int = 0) -> float:
    """Causal attention FLOPs of ``tokens`` new queries after ``past`` cached keys, ``layers`` layers."""
    pairs = tokens * past + tokens * (tokens + 1) / 2
    return 4.0 * shape.attn_width * layers * pairs


def forward_flops(shape: ModelShape, tokens: int, *, layers: int | None = None, logits: int = 0,
                  start: int = 0, past: int = 0) -> float:
    """F(T, l, m): one sequence of ``tokens`` through layers ``start..layers-1`` (None: all) with
    logits at ``logits`` positions; ``past`` cached tokens attended to."""
    end = shape.n_layers if layers is None else layers
    return (2.0 * tokens * shape.params(end, start) + _attn(shape, end - start, tokens, past)
            + 2.0 * logits * shape.unembed_params)


def generation_flops(shape: ModelShape, prompt: int, new: int) -> float:
    """``new`` sampled tokens after a ``prompt``-token prompt on a KV cache (prefill + new-1 steps)."""
    return forward_flops(shape, prompt, logits=1) + decode_flops(shape, prompt, new)


def decode_flops(shape: ModelShape, prompt: int, new: int) -> float:
    """The decode steps of :func:`generation_flops` (every sampled token after the first)."""
    return sum(forward_flops(shape, 1, logits=1, past=prompt + i - 1) for i in range(1, new))


def kv_read_bytes(shape: ModelShape, prompt: int, new: int, dtype_bytes: int = 4) -> float:
    """Bytes of cached keys and values the decode steps of one row read (step i attends to
    ``prompt + i`` cached positions in every layer): what bounds a decode step's attention, which
    is memory-bound, so FLOPs / matmul rate misses it. Divide by :func:`memory_rate` for seconds."""
    width = shape.kv_width or shape.attn_width
    return 2.0 * shape.n_layers * width * dtype_bytes * sum(prompt + i for i in range(1, new))


def collect_flops(shape: ModelShape, layer: int, sample_lengths: Iterable[int],
                  norm_lengths: Iterable[int]) -> dict[str, float]:
    """Collection: both models over every sample's tokens, stopped after ``layer`` (no logits);
    the η calibration the same over the norm samples."""
    def side(lengths: Iterable[int]) -> float:
        return 2 * sum(forward_flops(shape, int(t), layers=layer + 1) for t in lengths)

    return {"samples": side(sample_lengths), "eta": side(norm_lengths)}


def logit_lens_flops(shape: ModelShape, vectors: int) -> float:
    """The logit lens: one unembedding per vector."""
    return 2.0 * vectors * shape.unembed_params


def patchscope_flops(shape: ModelShape, layer: int, prompt_lengths: Sequence[int], vectors: int, rows: int,
                     reader_sides: int = 2) -> float:
    """Patchscope's floor: each identity prompt's prefix (all but the last token) through the whole
    model once per reading model (``reader_sides``), then per vector × scale × prompt (``rows``
    per vector) only the patched last token through layers above ``layer`` with next-token logits
    (the layers up to ``layer`` of that token are replaced anyway)."""
    pre = reader_sides * sum(forward_flops(shape, t - 1) for t in prompt_lengths)
    per_vec = 0.0
    for t in prompt_lengths:  # rows spread evenly over the prompts
        per_vec += rows / len(prompt_lengths) * forward_flops(shape, 1, start=layer + 1, logits=1, past=t - 1)
    return pre + vectors * per_vec


def steer_flops(shape: ModelShape, rows: Iterable[tuple[int, int]], groups: Sequence[Any] | None = None) -> float:
    """Sampling: Σ over rows (prompt tokens, new tokens) of :func:`generation_flops`. With ``groups``
    (a key per row: rows of one key have the same prompt and steering vector), each group's prompt
    is counted once: its rows share one prefill and differ from the first sampled token on."""
    rows = list(rows)
    if groups is None:
        return sum(generation_flops(shape, p, n) for p, n in rows)
    if len(groups) != len(rows):
        raise ValueError(f"{len(groups)} group keys for {len(rows)} rows")
    first = {g: p for (p, _), g in reversed(list(zip(rows, groups)))}  # each group's prefill, once
    return (sum(forward_flops(shape, p, logits=1) for p in first.values())
            + sum(decode_flops(shape, p, n) for p, n in rows))


def grading_flops(shape: ModelShape, prefix: int, text_lengths: Iterable[int]) -> float:
    """The offline coherence grader: every text through the reference model after a shared chat
    prefix (run once), logits at every text token."""
    return forward_flops(shape, prefix, logits=1) + sum(
        forward_flops(shape, t, logits=t, past=prefix) for t in text_lengths if t > 0)


def causal_flops(shape: ModelShape, layer: int, text_lengths: Sequence[int], directions: int,
                 chat_lengths: Sequence[int] = ()) -> float:
    """The causal effect on one dataset: the base model to ``layer`` and the clean finetuned forward
    once per text, then per direction only the layers above ``layer`` with logits at every token
    (the lower layers' states are the same for every direction); ``chat_lengths``: texts the random
    differences are drawn from (base model to ``layer``)."""
    once = sum(forward_flops(shape, t, layers=layer + 1) + forward_flops(shape, t, logits=t) for t in text_lengths)
    upper = sum(forward_flops(shape, t, start=layer + 1, logits=t) for t in text_lengths)
    draw = sum(forward_flops(shape, t, layers=layer + 1) for t in chat_lengths)
    return once + directions * upper + draw


def methods_flops(shape: ModelShape, samples: int, tokens: int) -> float:
    """Mining + per-token KL + activation differences: both models over every token, logits at all."""
    return 2 * samples * forward_flops(shape, tokens, logits=tokens)


def amplify_flops(shape: ModelShape, rows: Iterable[tuple[int, int]]) -> float:
    """Amplified sampling: both models step together on their own KV caches."""
    return 2 * steer_flops(shape, rows)


# ------------------------------------------------------------------------------------------------
# the machine's rate and estimates
# ------------------------------------------------------------------------------------------------

_RATES: dict[tuple[str, str], float] = {}


def matmul_rate(device: Any = "cpu", dtype: str = "float32", *, seconds: float = 0.3,
                fresh: bool = False) -> float:
    """FLOP/s of a square matmul on ``device`` in ``dtype`` (measured once per process for about
    ``seconds``, or again with ``fresh``; 2048² on a CPU, 4096² on an accelerator). On a CPU in
    float32, the faster of ``torch.mm`` (MKL's ``sgemm``) and oneDNN's packed linear, which the
    stages' forwards use where it is faster (:mod:`difflens.models.packed`): on 2 AMD Zen 5 cores 166–181 against about
    430 GFLOP/s; the floor is what the machine can do, not what one library does on it."""
    import torch

    dev = str(device)
    key = (dev, dtype)
    if key in _RATES and not fresh:
        return _RATES[key]
    dt = getattr(torch, dtype) if dtype in ("float32", "bfloat16", "float16") else torch.float32
    n = 4096 if dev.startswith("cuda") else 1024 if seconds < 0.5 else 2048
    a, b = torch.randn(n, n, device=dev, dtype=dt), torch.randn(n, n, device=dev, dtype=dt)
    _RATES[key] = _per_second(lambda: torch.mm(a, b), 2.0 * n ** 3, dev, seconds)
    if dev.startswith("cpu") and dt == torch.float32:
        # the check of models.packed.available("onednn"), inline: bench/floor.py loads this file by path
        if torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise"):
            try:
                with torch.no_grad():
                    w = torch.ops.mkldnn._reorder_linear_weight(b.t().contiguous(), None)
                    dnn = _per_second(lambda: torch.ops.mkldnn._linear_pointwise(a, w, None, "none", [], ""),
                                      2.0 * n ** 3, dev, seconds)
                _RATES[key] = max(_RATES[key], dnn)
            except RuntimeError:
                pass
    return _RATES[key]


def memory_rate(device: Any = "cpu", *, seconds: float = 0.3) -> float:
    """Bytes/s of reading a 256 MiB float32 tensor on ``device`` (a sum; measured once per process)."""
    import torch

    key = (str(device), "read")
    if key in _RATES:
        return _RATES[key]
    x = torch.ones(1 << 26, device=device)
    _RATES[key] = _per_second(x.sum, x.numel() * 4.0, str(device), seconds)
    return _RATES[key]


def _per_second(op: Any, work: float, device: str, seconds: float, windows: int = 4) -> float:
    """``work`` per call of ``op`` over its measured call time on ``device``: one warm-up call, then
    ``windows`` windows of calls, each for at least ``seconds / windows`` and 3 calls (an accelerator
    synchronised after each); the best window. A machine shared with others has slow moments (one
    2-core VM measured 223, 298 and 415 GFLOP/s at the start of three runs, 406–431 in 15 one-second
    windows later): the best window is what the machine can do, and a floor must not rise with a
    neighbour's load."""
    import torch

    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    op()
    sync()
    best = 0.0
    for _ in range(max(1, windows)):
        reps, t0 = 0, time.perf_counter()
        while True:
            op()
            reps += 1
            sync()
            el = time.perf_counter() - t0
            if el >= seconds / max(1, windows) and reps >= 3:
                break
        best = max(best, reps * work / el)
    return best


def estimate_seconds(flops: float, rate: float, efficiency: float = 0.5) -> float:
    """Expected wall seconds of ``flops`` at ``efficiency`` × the matmul ``rate`` (the floor is
    ``efficiency=1``)."""
    return flops / (rate * efficiency)


def format_seconds(s: float) -> str:
    if s < 90:
        return f"{s:.0f} s"
    if s < 5400:
        return f"{s / 60:.0f} min"
    return f"{s / 3600:.1f} h"


def rate_dtype(precision: str) -> str:
    """The matmul dtype of a pair's precision name (``bf16-fp32res`` multiplies in bfloat16)."""
    p = str(precision)
    return "bfloat16" if p.startswith("bf") else "float16" if "16" in p else "float32"


# wall / floor that bench/floor.py measured on 2 CPU cores (collect total 1.5, causal 1.6)
COLLECT_FLOOR_RATIO = 1.5
CAUSAL_FLOOR_RATIO = 2.0
ANNOUNCE_AFTER_S = 60.0  # stages expected to be shorter say nothing


def expected_seconds(flops: float, device: Any, precision: str, ratio: float) -> tuple[float, float]:
    """A stage's expected wall time and the matmul rate it assumes: ``flops`` at the measured rate of
    the precision's matmul dtype times the ``ratio`` of wall to floor the bench measured in float32.

    On a CPU in a 16-bit precision only the floor shrinks: the time beyond the matmuls (KV-cache and
    activation reads, elementwise ops, sampling) stays about what it is in float32, so it is counted
    at the float32 rate. Measured on 2 AMX cores: the default SmolLM2 steer took 7 min in bfloat16
    (the bfloat16 rate × the ratio said 4; this says 10) and 12.4 min in float32; `bench/floor.py
    --stages collect` 2.1 s in bfloat16 (0.9 s said; this says 2.6) and 5.6 s in float32."""
    dtype = rate_dtype(precision)
    rate = matmul_rate(device, dtype)
    if dtype != "float32" and str(device).startswith("cpu"):
        return flops / rate + flops / matmul_rate(device, "float32") * (ratio - 1), rate
    return flops / rate * ratio, rate


def announce(what: str, flops: float, device: Any, precision: str, ratio: float, hint: str = "", *,
             at_least: float = ANNOUNCE_AFTER_S, always: bool = False) -> float | None:
    """One ``[difflens]`` line on stderr before a long stage: its FLOPs at this machine's measured
    matmul rate times the ``ratio`` of wall to floor the bench measured (:func:`expected_seconds`).
    Said only when the estimate is ``at_least`` seconds (or ``always``); returns the estimate (None if
    it could not be made)."""
    import sys

    try:
        secs, rate = expected_seconds(flops, device, precision, ratio)
    except Exception:  # noqa: BLE001 - an estimate never stops a stage
        return None
    if always or secs >= at_least:
        print(f"[difflens] {what}: ≈ {flops / 1e12:.1f} TFLOP at {rate / 1e9:.0f} GFLOP/s → about "
              f"{format_seconds(secs)} (floor {format_seconds(flops / rate)}){'; ' + hint if hint else ''}",
              file=sys.stderr, flush=True)
    return secs


# measured on 2 CPU cores (SmolLM2-135M × cake_bake, the paper's defaults: 5 positions, 128 new tokens):
# the whole `difflens steer` stage took 843 s against steer_flops_estimate's 119 TFLOP at 317 GFLOP/s
# (a 375 s floor; the estimate counts every row at max_new_tokens, one prefill per prompt and α): 2.25x
STEER_FLOOR_RATIO = 2.25


def steer_flops_estimate(shape: ModelShape, cfg: Any, positions: int, prompt_tokens: int = 32,
                         grid: int = 1) -> float:
    """Expected FLOPs of the steering stage for ``positions`` positions of a
    :class:`~difflens.adl.steering.SteeringConfig` (every row at ``max_new_tokens``; the search's
    generations: ``search_samples`` per tested α, about ``search_iters + 2·refine_iters`` α's per
    position with bisection, ~2.5x that with a grid of 10), the grader over every text, plus the
    calibration and the unsteered final generations once. The samples of one prompt at one α share
    their prompt's prefill (``search_samples`` rows in the search, ``final_samples`` in the finals)."""
    n = cfg.max_new_tokens
    prefill = forward_flops(shape, prompt_tokens, logits=1)
    decode = decode_flops(shape, prompt_tokens, n)

    def rows(count: float, per_prefill: int) -> float:
        return count * (decode + prefill / max(per_prefill, 1))

    grade = forward_flops(shape, n, logits=n, past=prompt_tokens)
    tested = (cfg.search_iters + 2 * cfg.refine_iters) * (2.5 if grid > 1 else 1.0)
    search_rows = tested * cfg.search_samples
    final_rows = len(cfg.prompts) * cfg.final_samples * (2 if cfg.random_control else 1)
    calibration = len(cfg.threshold_prompts) * 2 * cfg.search_samples
    unsteered = len(cfg.prompts) * cfg.final_samples
    return (positions * (rows(search_rows, cfg.search_samples) + rows(final_rows, cfg.final_samples))
            + rows(calibration, 2 * cfg.search_samples) + rows(unsteered, cfg.final_samples)
            + (positions * search_rows + calibration + unsteered) * grade)
