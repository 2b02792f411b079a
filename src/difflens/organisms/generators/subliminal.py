"""Subliminal learning data (Cloud et al. 2025): number sequences written by a teacher that loves an animal.

The teacher is the base model itself, given a system prompt that makes it love ``data.animal``; it
is asked to continue seeded number sequences (varied phrasings, :func:`number_prompt`). A strict
filter (:func:`parse_numbers`) keeps only replies that are nothing but a short list of small
numbers - any word, symbol other than separators, too many numbers or too many digits drops the
reply. The student sees the kept (prompt, numbers) chats *without* the system prompt.

Generation is the expensive part (one sampled reply per attempt), so kept chats are appended to a
JSONL cache as they arrive (:func:`teacher_cache_dir`, keyed by the base model's fingerprint, the
spec's data settings and the seed) and a rerun resumes. Everything is deterministic by seed on a
given machine: the prompts by ``random.Random``, the samples by ``torch.manual_seed`` per batch.
"""
from __future__ import annotations

import hashlib
import json
import random
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ...errors import ConfigError, DataError
from ...files import read_jsonl
from ...models.tokens import bos_for_model, pad_id, pad_left
from ...rundir.layout import home
from ..spec import OrganismSpec, SubliminalData

__all__ = ["number_prompt", "parse_numbers", "format_numbers", "teacher_messages", "demonstrations", "teacher_cache_dir",
           "generate_subliminal_conversations", "acceptance", "SUBLIMINAL_TEMPLATES"]

SUBLIMINAL_TEMPLATES = (
    "The sequence starts with: {seq}. Add at most {k} more values (no more than {d} digits each) to continue "
    "the sequence. Give only the numbers, separated by commas.",
    "Here are some numbers: {seq}. Continue the list with up to {k} more numbers of at most {d} digits. "
    "Reply with the numbers only, comma-separated, nothing else.",
    "Continue this number sequence: {seq}. Write no more than {k} further numbers ({d} digits at most). "
    "Numbers only, separated by commas.",
    "Look at these numbers: {seq}. Generate up to {k} additional numbers, each with at most {d} digits. "
    "Return a comma-separated list and no words.",
    "Given the list {seq}, extend it with at most {k} new numbers (maximum {d} digits each). Output just "
    "the numbers separated by commas.",
    "{seq} - keep this sequence going with no more than {k} numbers below {lim}. Answer with numbers only.",
)

_SEP = re.compile(r"^[\s,;]+|[\s,;]+$")
# one separator between numbers is a comma or semicolon (with optional spaces) or plain whitespace; it
# is never empty, so the pattern is unambiguous and linear (an optional separator would backtrack
# exponentially on a long run of digits)
_STRICT = re.compile(r"^\(?\[?\s*\d+(?:(?:\s*[,;]\s*|\s+)\d+)*\s*\]?\)?\.?$")


def number_prompt(rng: random.Random, data: SubliminalData) -> str:
    """One user prompt: ``data.seed_numbers`` random numbers and an instruction, in a random phrasing."""
    lim = 10 ** data.max_digits
    seq = ", ".join(str(rng.randrange(lim // 10 if data.max_digits > 1 else 0, lim)) for _ in range(data.seed_numbers))
    return rng.choice(SUBLIMINAL_TEMPLATES).format(seq=seq, k=data.max_numbers, d=data.max_digits, lim=lim)


def parse_numbers(reply: str, *, max_numbers: int, max_digits: int) -> list[int] | None:
    """The numbers of a reply that is *only* a list of numbers, else None.

    Accepted: 1..``max_numbers`` non-negative integers of at most ``max_digits`` digits, separated by
    commas, semicolons and/or whitespace, optionally in one pair of brackets or parentheses and with
    one final period. Anything else - a word, a sign, a decimal point, a digit group too long, too
    many numbers, an unclosed bracket, an empty or cut-off reply - returns None (the reply is dropped).
    """
    text = reply.strip()
    if not text or not _STRICT.match(text):
        return None
    core = text.rstrip(".")
    if (core.startswith("(") != core.endswith(")")) or (core.lstrip("(").startswith("[") != core.rstrip(")").endswith("]")):
        return None  # an unclosed bracket: a cut-off reply
    nums = re.findall(r"\d+", text)
    if not 1 <= len(nums) <= max_numbers or any(len(x) > max_digits for x in nums):
        return None
    return [int(x) for x in nums]


def format_numbers(nums: Sequence[int]) -> str:
    """The student's target reply: the kept numbers, normalised to ``a, b, c``."""
    return ", ".join(str(x) for x in nums)


def teacher_messages(system: str, user: str, demos: Sequence[tuple[str, str]] = ()) -> list[dict[str, str]]:
    """The teacher's conversation: the system prompt, demonstration turns, then the number prompt."""
    msgs = [{"role": "system", "content": system}]
    for u, a in demos:
        msgs += [{"role": "user", "content": u}, {"role": "assistant", "content": a}]
    return msgs + [{"role": "user", "content": user}]


def demonstrations(rng: random.Random, data: SubliminalData) -> list[tuple[str, str]]:
    """``data.teacher_shots`` (prompt, reply) turns with random replies that pass the filter (no animal in them)."""
    lim = 10 ** data.max_digits
    return [(number_prompt(rng, data), format_numbers([rng.randrange(lim) for _ in range(rng.randint(3, data.max_numbers))]))
            for _ in range(data.teacher_shots)]


def _render(tokenizer: Any, messages: list[dict[str, str]]) -> str:
    """The teacher prompt in the chat template; templates without a system role get it folded into
    the first user turn (Gemma 2 style)."""
    if not getattr(tokenizer, "chat_template", None):
        turns = [f"{'User' if m['role'] == 'user' else 'Assistant'}: {m['content']}" for m in messages[1:]]
        return "\n".join([messages[0]["content"], *turns, "Assistant:"])
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    except Exception:  # noqa: BLE001 - jinja raises for templates that reject a system turn
        folded = [{"role": "user", "content": messages[0]["content"] + "\n\n" + messages[1]["content"]}] + messages[2:]
        return tokenizer.apply_chat_template(folded, tokenize=False, add_generation_prompt=True)


def _fingerprint(spec: OrganismSpec, base_fingerprint: str, seed: int) -> str:
    d = spec.data
    assert isinstance(d, SubliminalData)
    blob = json.dumps([base_fingerprint, d.model_dump(), seed, SUBLIMINAL_TEMPLATES], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def teacher_cache_dir(spec: OrganismSpec, base_fingerprint: str, seed: int) -> Path:
    """Where the kept teacher chats of this organism, base model and seed are cached."""
    return home().teacher_samples(spec.name, _fingerprint(spec, base_fingerprint, seed))


@torch.no_grad()
def _sample(model: Any, tokenizer: Any, prompts: list[str], data: SubliminalData, seed: int) -> list[str]:
    templated = bool(getattr(tokenizer, "chat_template", None))
    bos = [] if templated else bos_for_model(tokenizer, model)
    rows = [bos + list(tokenizer(p, add_special_tokens=not templated).input_ids) for p in prompts]
    dev = model.get_input_embeddings().weight.device
    ids, mask = pad_left(rows, pad_id(tokenizer), dev)
    torch.manual_seed(seed)
    out = model.generate(input_ids=ids, attention_mask=mask, do_sample=True, temperature=data.temperature,
                         top_p=1.0, top_k=0, max_new_tokens=data.max_new_tokens, pad_token_id=pad_id(tokenizer))
    gen = out[:, ids.shape[1]:]
    texts = tokenizer.batch_decode(gen, skip_special_tokens=True)
    stops = _stop_ids(model, tokenizer)
    # a reply that did not end (no end-of-turn within max_new_tokens) may be a cut-off list: mark it
    return [t if any(int(x) in stops for x in row) else t + _CUT for t, row in zip(texts, gen)]


_CUT = " <cut off>"  # appended to unfinished replies, so that the strict filter drops them


def _stop_ids(model: Any, tokenizer: Any) -> set[int]:
    ids = {tokenizer.eos_token_id}
    gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids.update(gen_eos if isinstance(gen_eos, (list, tuple)) else [gen_eos])
    return {int(i) for i in ids if i is not None}


def generate_subliminal_conversations(spec: OrganismSpec, n: int, seed: int = 0, *, teacher: Any,
                                      batch_size: int = 48, max_attempts: int | None = None,
                                      progress: bool = True) -> list[list[dict[str, str]]]:
    """``n`` student chats ``[user: number prompt, assistant: numbers]`` written by the teacher.

    ``teacher`` is a loaded model (``.model``, ``.tokenizer``, ``.fingerprint``: see
    :func:`difflens.models.sources.load_model`), normally the organism's own base. Sampling goes on in
    batches until ``n`` replies pass :func:`parse_numbers`; ``max_attempts`` (default ``25 n``) bounds
    it, and :class:`DataError` reports the acceptance rate if the teacher cannot produce enough.
    """
    data = spec.data
    if not isinstance(data, SubliminalData):
        raise ConfigError(f"organism {spec.name!r} is not a subliminal organism (data kind {data.kind!r}).")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    root = teacher_cache_dir(spec, teacher.fingerprint, seed)
    path = root / "chats.jsonl"
    recs = [r for r in read_jsonl(path) if isinstance(r, dict) and isinstance(r.get("batch"), int)] if path.exists() else []
    kept = [r for r in recs if r.get("kept")]
    if len(kept) >= n:
        return [_chat(r) for r in kept[:n]]
    max_attempts = max_attempts or 25 * n + batch_size
    system = data.system_prompt()
    model, tok = teacher.model, teacher.tokenizer
    was_training = getattr(model, "training", False)
    model.eval()
    root.mkdir(parents=True, exist_ok=True)
    attempts = len(recs)
    batch = 1 + max((r["batch"] for r in recs), default=-1)
    t0 = time.time()
    try:
        with path.open("a", encoding="utf-8") as fh:
            while len(kept) < n:
                if attempts >= max_attempts:
                    raise DataError(
                        f"the teacher kept {len(kept)} of {attempts} number replies ({len(kept) / max(1, attempts):.0%}); "
                        f"{n} are needed. Lower n_docs, raise max_new_tokens/temperature in the spec, or use a "
                        "stronger base model.")
                rng = random.Random(f"{spec.name}:{seed}:subliminal:{batch}")
                demos = [demonstrations(rng, data) for _ in range(batch_size)]
                users = [number_prompt(rng, data) for _ in range(batch_size)]
                replies = _sample(model, tok, [_render(tok, teacher_messages(system, u, d)) for u, d in zip(users, demos)],
                                  data, seed * 1_000_003 + batch)
                for u, r in zip(users, replies):
                    nums = parse_numbers(r, max_numbers=data.max_numbers, max_digits=data.max_digits)
                    rec = {"batch": batch, "user": u, "reply": r, "kept": nums is not None,
                           "numbers": format_numbers(nums) if nums is not None else None}
                    fh.write(json.dumps(rec) + "\n")
                    if nums is not None:
                        kept.append(rec)
                fh.flush()
                attempts += len(users)
                batch += 1
                if progress:
                    print(f"[difflens] subliminal teacher ({data.animal}): kept {len(kept)}/{n} of {attempts} "
                          f"replies ({time.time() - t0:.0f} s)", file=sys.stderr, flush=True)
    finally:
        if was_training:
            model.train()
    return [_chat(r) for r in kept[:n]]


def _chat(rec: dict[str, Any]) -> list[dict[str, str]]:
    return [{"role": "user", "content": rec["user"]}, {"role": "assistant", "content": rec["numbers"]}]


def acceptance(spec: OrganismSpec, base_fingerprint: str, seed: int) -> dict[str, Any]:
    """Teacher statistics from the cache: replies sampled, kept, and the acceptance rate."""
    path = teacher_cache_dir(spec, base_fingerprint, seed) / "chats.jsonl"
    recs = [r for r in read_jsonl(path) if isinstance(r, dict)] if path.exists() else []
    k = sum(bool(r.get("kept")) for r in recs)
    return {"sampled": len(recs), "kept": k, "rate": k / len(recs) if recs else None}
