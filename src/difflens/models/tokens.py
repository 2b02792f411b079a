"""Tokens: BOS policy, encoding, chat prompts and padding — the one place for each.

- :func:`bos_prefix_ids` / :func:`encode`: raw text tokenised as the model expects (Gemma gets
  BOS even when the tokenizer would not add it);
- :func:`chat_prompt_ids`: a user turn in the chat template, ready for the assistant's answer,
  with the same BOS policy and never a doubled BOS;
- :func:`pad_right` / :func:`pad_left`: token-id rows as a padded batch with attention mask
  (right padding for scoring and collection, left padding for generation).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

import torch

from ..data.chat import chat_prompt_text

if TYPE_CHECKING:  # pragma: no cover
    from .arch import ArchAdapter

__all__ = ["ensure_pad_token", "pad_id", "bos_prefix_ids", "bos_for_model", "chat_bos_ids", "encode", "chat_prompt_ids", "pad_right", "pad_left"]


def ensure_pad_token(tok: Any) -> Any:
    """Give a tokenizer without a pad token one (EOS, else UNK); returns the tokenizer."""
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token if tok.eos_token is not None else tok.unk_token
    return tok


def pad_id(tok: Any) -> int:
    """The id used to fill padded positions (masked out, so its value never matters)."""
    return int(tok.pad_token_id) if tok.pad_token_id is not None else 0


def bos_prefix_ids(tokenizer: Any, arch: "ArchAdapter") -> list[int]:
    """Token ids to prepend to raw text so that it is tokenised as the model expects.

    Models trained with BOS (Gemma) get it even when the tokenizer would not add it.
    """
    probe = tokenizer("a", add_special_tokens=True).input_ids
    if arch.uses_bos and tokenizer.bos_token_id is not None and (not probe or probe[0] != tokenizer.bos_token_id):
        return [int(tokenizer.bos_token_id)]
    return []


def bos_for_model(tokenizer: Any, model: Any) -> list[int]:
    """:func:`bos_prefix_ids` for a bare model; an architecture difflens does not know gets none
    (the tokenizer's own policy)."""
    from .arch import ArchAdapter

    try:
        return bos_prefix_ids(tokenizer, ArchAdapter(model))
    except Exception:  # noqa: BLE001 - unknown architecture
        return []


def chat_bos_ids(tokenizer: Any, arch: "ArchAdapter") -> list[int]:
    """The BOS that text rendered with a chat template must start with (the policy of
    :func:`chat_prompt_ids`): the template's own special tokens are kept, and an architecture trained
    with BOS gets it where the template does not write it."""
    if arch.uses_bos and tokenizer.bos_token_id is not None:
        return [int(tokenizer.bos_token_id)]
    return []


def encode(tokenizer: Any, arch: "ArchAdapter", text: str, *, max_tokens: int | None = None) -> list[int]:
    """Tokenise raw text under the model's BOS policy, optionally truncated to ``max_tokens``."""
    ids = bos_prefix_ids(tokenizer, arch) + list(tokenizer(text, add_special_tokens=True).input_ids)
    return ids[:max_tokens] if max_tokens is not None else ids


def chat_prompt_ids(tokenizer: Any, arch: "ArchAdapter", prompt: str) -> list[int]:
    """Token ids of :func:`chat_prompt_text`: a template's own special tokens are kept as rendered
    (no second BOS); the architecture's BOS is added only where the text does not start with it."""
    return rendered_chat_ids(tokenizer, arch, chat_prompt_text(tokenizer, prompt))


def rendered_chat_ids(tokenizer: Any, arch: "ArchAdapter", text: str, *, max_tokens: int | None = None) -> list[int]:
    """Token ids of a conversation already rendered with the chat template (see :func:`chat_prompt_ids`)."""
    templated = bool(getattr(tokenizer, "chat_template", None))
    bos = [] if templated else bos_prefix_ids(tokenizer, arch)
    row = bos + list(tokenizer(text, add_special_tokens=not templated).input_ids)
    if templated and arch.uses_bos and tokenizer.bos_token_id is not None and (not row or row[0] != tokenizer.bos_token_id):
        row = [int(tokenizer.bos_token_id)] + row
    return row[:max_tokens] if max_tokens is not None else row


def pad_right(rows: Sequence[Sequence[int]], pad: int, device: torch.device | str | None = None
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows as a right-padded ``[B, T]`` batch and its attention mask (1 on real tokens)."""
    T = max(len(r) for r in rows)
    ids = torch.full((len(rows), T), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), T), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = torch.tensor(list(r), dtype=torch.long)
        mask[i, :len(r)] = 1
    if device is not None:
        ids, mask = ids.to(device), mask.to(device)
    return ids, mask


def pad_left(rows: Sequence[Sequence[int]], pad: int, device: torch.device | str | None = None
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows as a left-padded ``[B, T]`` batch (for generation) and its attention mask."""
    T = max(len(r) for r in rows)
    ids = torch.full((len(rows), T), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), T), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, T - len(r):] = torch.tensor(list(r), dtype=torch.long)
        mask[i, T - len(r):] = 1
    if device is not None:
        ids, mask = ids.to(device), mask.to(device)
    return ids, mask
