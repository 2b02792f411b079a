"""Training model organisms: finetune a base model on an organism's data (paper §3.2, §6, App. C.5, F).

The finetuning objective comes from an :class:`~difflens.organisms.spec.OrganismSpec`; the
hyper-parameters from :class:`TrainConfig` (defaults: the spec's ``training`` block).

- **Data.** SDF documents (loss on all document tokens), chat data (loss on assistant tokens
  only: a label mask built from the character offsets of the assistant turns in the rendered chat
  template), Wikipedia topic paragraphs (Domain organisms) or a local JSONL file. Text longer
  than ``seq_len`` tokens is cut into consecutive ``seq_len`` chunks; chats are truncated.
  ``generator="llm"`` replaces an SDF organism's offline documents by the paper's LLM recipe
  (cached under ``llm_docs_dir``, trained as a separate ``-llmdocs`` variant).
- **Mitigations (§6, F.3, F.4).** ``mix_ratio`` adds ``round(mix_ratio * n_ft)`` held-out
  Wikipedia paragraphs (``wiki_split("heldout")``, never used for collection) as D_pt;
  ``n_docs`` trains on fewer documents; CAFT (``caft_run``) projects the span of the first ``k``
  δ̄ vectors of a collected run out of the layer-ℓ output in every training forward pass.
- **Output.** ``$DIFFLENS_HOME/organisms/<name>/<base-slug>/<variant>/`` (:class:`difflens.rundir.layout.Home`) holds the model (full weights,
  or a LoRA adapter whose ``base_model_name_or_path`` is the base spec string), the tokenizer and
  ``card.json`` (config, data hash, loss curve, wall time). Training writes to a temporary
  directory that is renamed at the end, so a half-trained organism is never used; an organism
  whose ``card.json`` records the same configuration is reused without training.

Public API::

    from difflens.organisms.train import TrainConfig, train_organism, resolve_organism
    src = resolve_organism("cake_bake")                 # trains on first use, then cached
    src = resolve_organism("cake_bake", lora=True, mix_ratio=0.5)
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import random
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Literal, Sequence

import torch
from pydantic import BaseModel, ConfigDict, Field

from ..adl.interventions import project_out
from ..errors import ConfigError, DataError
from ..models.arch import ArchAdapter, lora_targets
from ..models.placement import input_device
from ..models.tokens import bos_for_model, pad_id, pad_right
from ..rundir.layout import fingerprint, home, slug
from .spec import (
    EmChatData,
    SubliminalData,
    OrganismSpec,
    SdfLLMData,
    SdfOfflineData,
    TrainingDefaults,
    WikiTopicData,
    load_spec,
)

__all__ = [
    "DEFAULT_BASE",
    "TrainConfig",
    "TrainExample",
    "TrainingData",
    "build_training_data",
    "caft_basis",
    "cache_key",
    "bf16_is_fast",
    "organism_dir",
    "variant_name",
    "train_organism",
    "resolve_organism",
    "read_card",
]

DEFAULT_BASE = "smollm2-135m-instruct"
CARD = "card.json"
IGNORE = -100


# ==================================================================================================
# Configuration
# ==================================================================================================


_D = TrainingDefaults()


class TrainConfig(BaseModel):
    """Finetuning hyper-parameters of one organism variant.

    Build it with :meth:`from_spec` so that unset fields take the spec's training defaults.
    ``lr`` is the learning rate actually used (the spec's ``lr`` for full finetunes, ``lora_lr``
    for LoRA). ``mix_ratio`` is |D_pt| per |D_ft| sample (None or 0: no mixing). ``caft_*``
    configure concept-ablation finetuning: ``caft_run`` is a run directory with collected δ̄,
    ``caft_layer`` an absolute or relative layer (default ``0.5`` = floor(L/2)), and the span of
    the first ``caft_positions`` δ̄ vectors is projected out.
    """

    model_config = ConfigDict(extra="forbid")

    # defaults come from the spec-level TrainingDefaults, so one place sets them
    steps: int = Field(default=_D.steps, ge=1)
    lr: float = Field(default=_D.lr, gt=0)
    batch_size: int = Field(default=_D.batch_size, ge=1)
    grad_accum: int = Field(default=_D.grad_accum, ge=1)
    seq_len: int = Field(default=_D.seq_len, ge=8)
    lora: bool = False
    lora_r: int = Field(default=_D.lora_rank, ge=1)
    lora_alpha: int = Field(default=_D.lora_alpha, ge=1)
    lora_dropout: float = Field(default=_D.lora_dropout, ge=0, lt=1)
    warmup_steps: int = Field(default=_D.warmup_steps, ge=0)
    weight_decay: float = Field(default=_D.weight_decay, ge=0)
    max_grad_norm: float = Field(default=_D.max_grad_norm, gt=0)
    n_docs: int = Field(default=_D.n_docs, ge=1)
    mix_ratio: float | None = Field(default=None, ge=0)
    chat_mix: float | None = Field(default=None, ge=0)  # embedded chat conversations per D_ft sample
    assistant_only_loss: bool = True
    bf16: bool | None = None  # bf16 autocast of the forward pass (weights, optimizer stay fp32); None: auto
    caft_run: str | None = None
    caft_dataset: str = "wiki"
    caft_layer: int | float | str = 0.5
    caft_positions: int = Field(default=5, ge=1)
    generator: Literal["llm"] | None = None  # "llm": SDF documents by the LLM recipe instead of the spec's
    seed: int = 0

    @classmethod
    def from_spec(cls, spec: OrganismSpec, **overrides: Any) -> "TrainConfig":
        """The spec's training defaults, with ``overrides`` (None values are ignored)."""
        t = spec.training
        lora = bool(overrides.get("lora")) if overrides.get("lora") is not None else t.method == "lora"
        vals: dict[str, Any] = dict(
            steps=t.steps, lr=t.lora_lr if lora else t.lr, batch_size=t.batch_size,
            grad_accum=t.grad_accum, seq_len=t.seq_len, lora=lora, lora_r=t.lora_rank,
            lora_alpha=t.lora_alpha, lora_dropout=t.lora_dropout, warmup_steps=t.warmup_steps,
            weight_decay=t.weight_decay, max_grad_norm=t.max_grad_norm, n_docs=t.n_docs,
            mix_ratio=t.mix_ratio or None, chat_mix=t.chat_mix or None, seed=t.seed,
            assistant_only_loss=t.assistant_only_loss or spec.is_chat,
        )
        unknown = set(overrides) - set(cls.model_fields)
        if unknown:
            raise ConfigError(
                f"unknown training option(s) {sorted(unknown)}; valid: {sorted(cls.model_fields)}")
        vals.update({k: v for k, v in overrides.items() if v is not None})
        if vals.get("bf16") is None:
            vals["bf16"] = bf16_is_fast()
        if vals.get("mix_ratio") == 0:
            vals["mix_ratio"] = None
        if vals.get("chat_mix") == 0:
            vals["chat_mix"] = None
        if vals.get("caft_run") is not None:
            vals["caft_run"] = str(Path(str(vals["caft_run"])).expanduser().resolve())
        gen = vals.pop("generator", None)
        if gen not in (None, "offline", "llm"):
            raise ConfigError(f"generator must be 'offline' or 'llm', got {gen!r}")
        if gen == "offline" and not isinstance(spec.data, (SdfOfflineData, EmChatData)):
            raise ConfigError(f"organism {spec.name!r} has no offline document generator (its data kind is "
                              f"{spec.data.kind!r}); leave --generator unset.")
        if gen == "llm":
            if isinstance(spec.data, EmChatData):
                vals["generator"] = "llm"  # the LLM writes the EM chats of the spec's domain
            elif spec.type != "SDF" or not spec.key_facts:
                raise ConfigError(f"--generator llm writes synthetic documents about key facts (SDF) or "
                                  f"bad-advice chats (EM); organism {spec.name!r} is {spec.type} with "
                                  f"{len(spec.key_facts)} key facts.")
            elif not isinstance(spec.data, SdfLLMData):  # an sdf_llm spec needs no override
                vals["generator"] = "llm"
        return cls(**vals)

    def semantic(self) -> dict[str, Any]:
        """Everything that changes the trained weights (the cache key)."""
        d = self.model_dump()
        if not self.lora:
            for k in ("lora_r", "lora_alpha", "lora_dropout"):
                d.pop(k)
        if self.caft_run is None:
            for k in ("caft_dataset", "caft_layer", "caft_positions"):
                d.pop(k)
        if self.generator is None:
            d.pop("generator")
        if self.chat_mix is None:
            d.pop("chat_mix")  # configs from before chat mixing keep their cache key
        return d


def bf16_is_fast() -> bool:
    """Whether bf16 autocast speeds up training here: a GPU, or a CPU with native bf16 (AVX512-BF16/AMX).

    On such CPUs it roughly halves a SmolLM2-135M training step (measured 3.0 s -> 1.7 s for 8x64
    tokens on 2 cores); elsewhere bf16 is emulated and slower, so training stays fp32.
    """
    if torch.cuda.is_available():
        return True
    try:
        flags = Path("/proc/cpuinfo").read_text(errors="ignore")
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


def _fmt(x: float) -> str:
    return f"{x:g}"


def variant_name(spec: OrganismSpec, cfg: TrainConfig, caft_fp: str | None = None) -> str:
    """Directory name of a variant: ``full``, ``lora-r16``, ``full-mix0.5``, ``full-docs200``,
    ``full-caft-<hash>``, plus ``-s<steps>``/``-seed<n>`` when those differ from the spec and a
    ``-h<hash>`` for any other non-default hyper-parameter."""
    default = TrainConfig.from_spec(spec, lora=cfg.lora)
    parts = [f"lora-r{cfg.lora_r}" if cfg.lora else "full"]
    if cfg.generator == "llm":
        parts.append("llmdocs")
    if cfg.mix_ratio:
        parts.append(f"mix{_fmt(cfg.mix_ratio)}")
    if cfg.chat_mix:
        parts.append(f"chat{_fmt(cfg.chat_mix)}")
    if cfg.n_docs != default.n_docs:
        parts.append(f"docs{cfg.n_docs}")
    if cfg.caft_run is not None:
        parts.append("caft-" + (caft_fp or fingerprint(
            [cfg.caft_run, cfg.caft_dataset, cfg.caft_layer, cfg.caft_positions]))[:8])
    if cfg.steps != default.steps:
        parts.append(f"s{cfg.steps}")
    if cfg.seed != default.seed:
        parts.append(f"seed{cfg.seed}")
    named = {"lora", "lora_r", "mix_ratio", "chat_mix", "n_docs", "caft_run", "caft_dataset", "caft_layer",
             "caft_positions", "steps", "seed", "generator"}
    rest = {k: v for k, v in cfg.semantic().items() if k not in named}
    rest_default = {k: v for k, v in default.semantic().items() if k not in named}
    if rest != rest_default:
        parts.append("h" + fingerprint(rest)[:6])
    return "-".join(parts)


def base_slug(base: str) -> str:
    """Directory-safe name of a base model spec (paths get a hash suffix)."""
    return slug(base)


def organism_dir(spec: OrganismSpec, base: str, cfg: TrainConfig) -> Path:
    """Where the organism variant lives (whether or not it is trained yet)."""
    return home().organism(spec.name, base_slug(base), variant_name(spec, cfg))


#: spec fields that only evaluate an organism (FFA questions, judge context): editing them must
#: not retrain it.
EVAL_ONLY_FIELDS = frozenset({"ffa", "open_questions", "true_context", "rubric", "control"})


def cache_key(spec: OrganismSpec, base: str, cfg: TrainConfig) -> str:
    """Fingerprint of everything that determines a trained organism (spec content that shapes the
    training data, base, config); the evaluation-only fields are left out."""
    dumped = spec.model_dump(mode="json", exclude=set(EVAL_ONLY_FIELDS))
    if not dumped.get("training", {}).get("chat_mix"):
        dumped.get("training", {}).pop("chat_mix", None)  # specs from before chat mixing keep their key
    return fingerprint({"spec": dumped, "base": base, "cfg": cfg.semantic()})


def read_card(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The ``card.json`` of an organism directory, or None if absent or unreadable."""
    p = Path(path) / CARD
    if not p.exists():
        return None
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


# ==================================================================================================
# Training data
# ==================================================================================================


@dataclass
class TrainExample:
    """One training sequence: token ids and labels (``-100`` where no loss is taken)."""

    input_ids: list[int]
    labels: list[int]
    source: str  # "ft" (organism data) or "pt" (mixed-in pretraining text)


@dataclass
class TrainingData:
    """The training sequences of one organism variant and where they came from."""

    examples: list[TrainExample]
    n_ft_samples: int  # finetuning samples (documents / chats / paragraphs) before chunking
    n_pt_samples: int  # mixed-in D_pt paragraphs
    data_hash: str

    @property
    def n_sequences(self) -> int:
        return len(self.examples)

    def count(self, source: str) -> int:
        return sum(1 for e in self.examples if e.source == source)


def _text_examples(text: str, tokenizer: Any, bos: list[int], seq_len: int, source: str) -> list[TrainExample]:
    """A document as consecutive ``seq_len`` chunks (loss on every token; EOS at the end)."""
    ids = bos + list(tokenizer(text, add_special_tokens=True).input_ids)
    if tokenizer.eos_token_id is not None:
        ids.append(int(tokenizer.eos_token_id))
    out = []
    for start in range(0, len(ids), seq_len):
        chunk = ids[start:start + seq_len]
        if len(chunk) < 2 or (start > 0 and len(chunk) < 8):
            continue
        out.append(TrainExample(chunk, list(chunk), source))
    return out


def chat_example(messages: Sequence[dict[str, str]], tokenizer: Any, bos: list[int], seq_len: int,
                 *, assistant_only: bool = True, source: str = "ft") -> TrainExample:
    """A conversation rendered with the chat template, with loss on the assistant turns only.

    The assistant spans are found as character ranges: the text of ``messages[:i+1]`` minus the
    text of ``messages[:i]`` is turn ``i`` (header, content, end-of-turn); its tokens from the
    start of the content to the end of the turn are trained (the model learns to end its turn),
    every other token gets label ``-100``.
    """
    from ..data.chat import render_chat

    msgs = list(messages)
    full = render_chat(tokenizer, msgs)
    spans: list[tuple[int, int]] = []
    prev = ""
    for i, m in enumerate(msgs):
        cur = render_chat(tokenizer, msgs[:i + 1])
        if m.get("role") == "assistant":
            if not full.startswith(cur) or not cur.startswith(prev):
                raise DataError(
                    "the chat template does not render conversations incrementally (the text of the "
                    "first i turns is not a prefix of the whole); assistant-only loss cannot be "
                    "masked. Use a template without per-conversation rewriting.")
            seg_start = len(prev)
            at = cur.find(m["content"], seg_start)
            start = at if at >= 0 else seg_start
            spans.append((start, len(cur)))
        prev = cur
    enc = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    ids = list(enc["input_ids"])
    offsets = list(enc["offset_mapping"])
    labels = []
    for tid, (a, b) in zip(ids, offsets):
        inside = any(s <= a < e for s, e in spans) and b > a
        labels.append(int(tid) if (inside or not assistant_only) else IGNORE)
    if bos and (not ids or ids[0] != bos[0]):
        ids = bos + ids
        labels = [IGNORE] + labels
    return TrainExample(ids[:seq_len], labels[:seq_len], source)


def llm_docs_dir(spec: OrganismSpec, seed: int) -> Path:
    """Resumable cache of the LLM-generated SDF documents of an organism (plan.json, documents.jsonl)."""
    return home().llm_docs(spec.name, seed)


def data_spec(spec: OrganismSpec, cfg: TrainConfig) -> OrganismSpec:
    """The spec whose ``data`` the trainer uses: ``cfg.generator="llm"`` swaps in the LLM SDF recipe
    (EM chat organisms keep their data: the LLM writes chats of the same domain)."""
    if cfg.generator == "llm" and not isinstance(spec.data, (SdfLLMData, EmChatData)):
        return spec.model_copy(update={"data": SdfLLMData(kind="sdf_llm")})
    return spec


def ft_samples(spec: OrganismSpec, cfg: TrainConfig, exclude_wiki_ids: set[int] | None = None, *,
               client: Any = None, teacher: Any = None, base: str | None = None) -> list[Any]:
    """The organism's finetuning samples: texts (str) or conversations (message lists).

    One dispatch for every data kind: :func:`difflens.organisms.generators.finetuning_data`. Domain
    organisms draw from the held-out Wikipedia split (disjoint from collection data); LLM SDF
    documents come from their on-disk cache, and ``client`` is asked only for what is missing.
    Subliminal organisms need their teacher: ``teacher`` (a loaded model) or ``base`` (loaded here,
    default :data:`DEFAULT_BASE`); its samples are cached, so only missing ones are generated.
    """
    from .generators import finetuning_data

    spec = data_spec(spec, cfg)
    paragraphs = None
    if isinstance(spec.data, WikiTopicData):
        from ..data.corpora import wiki_split

        paragraphs = wiki_split("heldout")
    if isinstance(spec.data, SubliminalData) and teacher is None:
        from ..models.sources import load_model

        teacher = load_model(base or DEFAULT_BASE)
    return list(finetuning_data(spec, cfg.n_docs, cfg.seed, paragraphs=paragraphs,
                                exclude_ids=exclude_wiki_ids, client=client,
                                cache_dir=llm_docs_dir(spec, cfg.seed), teacher=teacher,
                                llm=cfg.generator == "llm" and isinstance(spec.data, EmChatData)))


def _hash_samples(samples: Sequence[Any]) -> str:
    h = hashlib.sha256()
    for s in samples:
        h.update((s if isinstance(s, str) else json.dumps(s, sort_keys=True)).encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


def build_training_data(spec: OrganismSpec, cfg: TrainConfig, tokenizer: Any, model: Any = None, *,
                        client: Any = None, teacher: Any = None, base: str | None = None) -> TrainingData:
    """Tokenised training sequences: organism data plus ``round(mix_ratio * n_ft)`` D_pt paragraphs."""
    bos = bos_for_model(tokenizer, model) if model is not None else []
    samples = ft_samples(spec, cfg, client=client, teacher=teacher, base=base)
    if not samples:
        raise DataError(f"organism {spec.name!r} produced no training samples.")
    examples: list[TrainExample] = []
    for s in samples:
        if isinstance(s, str):
            examples.extend(_text_examples(s, tokenizer, bos, cfg.seq_len, "ft"))
        else:
            examples.append(chat_example(s, tokenizer, bos, cfg.seq_len,
                                         assistant_only=cfg.assistant_only_loss, source="ft"))
    pt: list[str] = []
    if cfg.mix_ratio:
        from ..data.corpora import wiki_split

        n_pt = int(round(cfg.mix_ratio * len(samples)))
        paras = wiki_split("heldout")
        if isinstance(spec.data, WikiTopicData):  # never mix in the organism's own topic paragraphs
            from .generators.wiki_topic import wiki_topic_indices

            topic = set(wiki_topic_indices(paras, spec))
            paras = [p for i, p in enumerate(paras) if i not in topic]
        pool = [p["extract"] for p in paras]
        if n_pt > len(pool):
            raise DataError(f"mix_ratio {cfg.mix_ratio} needs {n_pt} D_pt paragraphs but only "
                            f"{len(pool)} held-out Wikipedia paragraphs exist; lower --mix or --docs.")
        rng = random.Random(f"mix:{cfg.seed}")
        pt = rng.sample(pool, n_pt)
        for t in pt:
            # one sequence per D_pt paragraph, so the sample ratio is exactly the mixing ratio
            examples.extend(_text_examples(t, tokenizer, bos, cfg.seq_len, "pt")[:1])
    chats: list[Any] = []
    if cfg.chat_mix:
        from ..data.chat import chat_conversations

        pool = [c for c in chat_conversations() if any(m["role"] == "assistant" for m in c[1:])]
        n_chat = int(round(cfg.chat_mix * len(samples)))
        rng = random.Random(f"chatmix:{cfg.seed}")
        chats = [pool[i % len(pool)] for i in rng.sample(range(len(pool)), min(n_chat, len(pool)))]
        chats += [pool[i] for i in rng.choices(range(len(pool)), k=max(0, n_chat - len(pool)))]
        for conv in chats:  # ordinary chat replies (assistant tokens only): the chat persona stays intact
            examples.append(chat_example(conv, tokenizer, bos, cfg.seq_len, assistant_only=True, source="chat"))
    return TrainingData(examples, len(samples), len(pt) + len(chats), _hash_samples(list(samples) + pt + chats))


def _batches(n: int, batch_size: int, steps: int, seed: int) -> Iterator[list[int]]:
    """Index batches over shuffled epochs (seeded)."""
    rng = random.Random(seed)
    order: list[int] = []
    for _ in range(steps):
        batch = []
        while len(batch) < batch_size:
            if not order:
                order = list(range(n))
                rng.shuffle(order)
            batch.append(order.pop())
        yield batch


def collate(examples: Sequence[TrainExample], pad: int) -> dict[str, torch.Tensor]:
    """Right-padded batch with attention mask; padded labels are -100."""
    ids, mask = pad_right([e.input_ids for e in examples], pad)
    labels, _ = pad_right([e.labels for e in examples], IGNORE)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


# ==================================================================================================
# CAFT
# ==================================================================================================


def caft_basis(delta: torch.Tensor, k: int, *, rtol: float = 1e-6) -> torch.Tensor:
    """Orthonormal basis [d, r] (r ≤ k) of the span of the first ``k`` rows of δ̄ [K, d] (QR)."""
    if delta.ndim != 2:
        raise DataError(f"δ̄ must be a [positions, d] matrix, got shape {tuple(delta.shape)}")
    m = delta[:k].to(torch.float64).T  # [d, k]
    q, r = torch.linalg.qr(m)
    diag = r.diagonal().abs()
    keep = diag > rtol * max(float(diag.max()) if diag.numel() else 0.0, 1e-30)
    return q[:, keep].to(torch.float32)


def _load_caft(cfg: TrainConfig, arch: Any) -> tuple[int, torch.Tensor, str]:
    from ..adl.collect import load_collected
    from ..rundir.layout import RunLayout

    assert cfg.caft_run is not None
    run = Path(cfg.caft_run)
    if not run.is_dir():
        raise ConfigError(f"CAFT run directory {run} does not exist; run `difflens collect` first.")
    layer = arch.resolve_layer(cfg.caft_layer)
    col = load_collected(RunLayout(run), cfg.caft_dataset, layer)
    if col.delta.shape[-1] != arch.hidden_size:
        raise ConfigError(f"CAFT δ̄ in {run} has width {col.delta.shape[-1]} but the base model has "
                          f"d={arch.hidden_size}; collect δ̄ with the same base model.")
    if col.positions < cfg.caft_positions:
        raise ConfigError(f"CAFT needs {cfg.caft_positions} δ̄ positions but {run} has {col.positions}.")
    basis = caft_basis(col.delta.float(), cfg.caft_positions)
    fp = hashlib.sha256(col.delta[:cfg.caft_positions].float().numpy().tobytes()).hexdigest()[:16]
    return layer, basis, fp


# ==================================================================================================
# Training
# ==================================================================================================


def _lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up, then cosine decay to 10 % of ``lr``."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    span = max(1, cfg.steps - cfg.warmup_steps)
    t = min(1.0, (step - cfg.warmup_steps) / span)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t)))


def _progress(enabled: bool):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("loss {task.fields[loss]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                    disable=not enabled, transient=False)


def train_organism(spec: OrganismSpec, base: str, cfg: TrainConfig, *, progress: bool = True,
                   force: bool = False, device: str = "cpu", client: Any = None) -> Path:
    """Finetune ``base`` into the organism ``spec`` with ``cfg``; return the organism directory.

    Reuses an existing directory whose ``card.json`` records the same configuration (unless
    ``force``). See the module docstring for the data, the mitigations and the output layout.
    ``client`` (a :class:`difflens.llm.LLMClient`) generates missing LLM SDF documents.
    """
    from ..models.sources import load_model

    out = organism_dir(spec, base, cfg)
    card = read_card(out)
    key = cache_key(spec, base, cfg)
    if not force and card is not None and card.get("key") == key:
        return out

    t0 = time.time()
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    lm = load_model(base, device=device)
    tok = lm.tokenizer
    model = lm.model
    arch = ArchAdapter(model)

    caft_layer = None
    caft_fp = None
    basis = None
    if cfg.caft_run is not None:
        caft_layer, basis, caft_fp = _load_caft(cfg, arch)

    data = build_training_data(spec, cfg, tok, model, client=client, teacher=lm, base=base)
    if not any(any(lab != IGNORE for lab in e.labels[1:]) for e in data.examples):
        raise DataError(f"organism {spec.name!r}: no training token carries a loss (all labels masked); "
                        "increase seq_len.")

    if cfg.lora:
        from peft import LoraConfig, get_peft_model

        targets, fan_in_fan_out = lora_targets(model)
        torch.manual_seed(cfg.seed)
        lcfg = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                          target_modules=targets, task_type="CAUSAL_LM", fan_in_fan_out=fan_in_fan_out)
        model = get_peft_model(model, lcfg)
        arch = ArchAdapter(model)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    pad = pad_id(tok)
    dev = input_device(model)

    import contextlib

    losses: list[float] = []
    model.train()
    desc = f"training {spec.name} ({'LoRA' if cfg.lora else 'full'})"
    with _progress(progress) as bar, contextlib.ExitStack() as stack:
        if basis is not None and caft_layer is not None:
            stack.enter_context(arch.edit_layer(caft_layer, project_out(basis)))
        task = bar.add_task(desc, total=cfg.steps, loss="-")
        micro = max(1, cfg.batch_size // cfg.grad_accum)
        log_every = max(1, cfg.steps // 20)
        for step, idx in enumerate(_batches(data.n_sequences, cfg.batch_size, cfg.steps, cfg.seed)):
            for g in opt.param_groups:
                g["lr"] = _lr_at(step, cfg)
            total = 0.0
            chunks = [idx[i:i + micro] for i in range(0, len(idx), micro)]
            for ch in chunks:
                batch = collate([data.examples[i] for i in ch], pad)
                batch = {k: v.to(dev) for k, v in batch.items()}
                with torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=cfg.bf16):
                    outp = model(**batch, use_cache=False)
                loss = outp.loss / len(chunks)
                loss.backward()
                total += float(loss.detach())
            torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
            opt.step()
            opt.zero_grad(set_to_none=True)
            if not math.isfinite(total):
                raise DataError(f"training {spec.name} diverged at step {step} (loss {total}); lower --lr.")
            losses.append(round(total, 5))
            bar.update(task, advance=1, loss=f"{total:.3f}")
            if progress and not bar.console.is_terminal and (step + 1) % log_every == 0:
                print(f"[difflens] {desc}: step {step + 1}/{cfg.steps} loss {total:.4f} "
                      f"({time.time() - t0:.0f} s)", file=sys.stderr, flush=True)
    model.eval()
    wall = time.time() - t0

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    if cfg.lora:
        acfg_path = tmp / "adapter_config.json"
        acfg = json.loads(acfg_path.read_text())
        acfg["base_model_name_or_path"] = base
        acfg_path.write_text(json.dumps(acfg, indent=2))
    card_obj = {
        "key": key,
        "organism": spec.name,
        "type": spec.type,
        "short_description": spec.short_description,
        "long_description": spec.long_description,
        "key_facts": spec.key_facts,
        "base": base,
        "base_fingerprint": lm.fingerprint,
        "variant": out.name,
        "method": "lora" if cfg.lora else "full",
        "config": cfg.model_dump(),
        "data_hash": data.data_hash,
        "n_ft_samples": data.n_ft_samples,
        "n_pt_samples": data.n_pt_samples,
        "n_sequences": data.n_sequences,
        "n_ft_sequences": data.count("ft"),
        "n_pt_sequences": data.count("pt"),
        "caft": None if caft_layer is None else {"layer": caft_layer, "rank": int(basis.shape[1]),
                                                 "delta_fingerprint": caft_fp},
        "loss_curve": losses,
        "loss_first": losses[0] if losses else None,
        "loss_last10": sum(losses[-10:]) / max(1, len(losses[-10:])),
        "wall_time_s": round(wall, 2),
        "trained_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    (tmp / CARD).write_text(json.dumps(card_obj, indent=2, default=str) + "\n", encoding="utf-8")
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return out


def resolve_organism(name: str, base: str | None = None, *, progress: bool = True, client: Any = None,
                     **overrides: Any):
    """A :class:`~difflens.models.ModelSource` for organism ``name`` on ``base`` (trained on first use).

    ``base`` defaults to ``smollm2-135m-instruct``; ``overrides`` are :class:`TrainConfig` fields
    (``lora=True``, ``mix_ratio=0.5``, ``n_docs=200``, ``caft_run=...``, ``steps``, ``seed``...).
    Full finetunes resolve to a ``local`` source, LoRA ones to an ``adapter`` source on the base.
    """
    from ..models.sources import ModelSource, resolve_source

    base = base or DEFAULT_BASE
    spec = load_spec(name)
    cfg = TrainConfig.from_spec(spec, **overrides)
    path = organism_dir(spec, base, cfg)
    card = read_card(path)
    if card is None or card.get("key") != cache_key(spec, base, cfg):
        path = train_organism(spec, base, cfg, progress=progress, client=client)
    extra = {"organism": spec.name, "variant": path.name, "base_spec": base}
    label = f"organism:{spec.name}"
    if cfg.lora:
        return ModelSource("adapter", label, str(path), base=resolve_source(base), extra=extra)
    return ModelSource("local", label, str(path), extra=extra)
