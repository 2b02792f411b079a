"""Chat data: the embedded conversations (chatterbot-corpus, chitchat-dataset) and their rendering
in a model's chat template."""
from __future__ import annotations

import json
from typing import Any, Sequence

from .packages import data_package_dir

__all__ = ["chat_conversations", "render_chat", "chat_prompt_text"]


def _chatterbot_pairs() -> list[tuple[str, str]]:
    import yaml


    root = data_package_dir("chatterbot_corpus") / "data" / "english"
    pairs: list[tuple[str, str]] = []
    for f in sorted(root.glob("*.yml")):
        try:
            doc = yaml.safe_load(f.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError:
            continue
        for conv in doc.get("conversations", []) or []:
            if isinstance(conv, list) and len(conv) >= 2:
                pairs.append((str(conv[0]), str(conv[1])))
    return pairs


def _chitchat_conversations() -> list[list[tuple[str, str]]]:
    """Each conversation as (role, text) turns, alternating speakers mapped to user/assistant."""

    path = data_package_dir("chitchat_dataset") / "dataset.json"
    raw = json.loads(path.read_text(encoding="utf-8"))
    convs = []
    for key in sorted(raw):
        turns = []
        for k, group in enumerate(raw[key].get("messages", [])):
            text = " ".join(m.get("text", "") for m in group).strip()
            if text:
                turns.append(("user" if k % 2 == 0 else "assistant", text))
        if len(turns) >= 2:
            convs.append(turns[:6])
    return convs


def chat_conversations() -> list[list[dict[str, str]]]:
    """Embedded chat data as message lists (chatterbot pairs, then chitchat conversations)."""
    out = [[{"role": "user", "content": q}, {"role": "assistant", "content": a}] for q, a in _chatterbot_pairs()]
    out += [[{"role": r, "content": t} for r, t in conv] for conv in _chitchat_conversations()]
    return out


def render_chat(tokenizer: Any, messages: Sequence[dict[str, str]]) -> str:
    """A conversation as text in the model's chat template (plain lines if it has none)."""
    if tokenizer is not None and getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(list(messages), tokenize=False)
    return "\n".join(f"{'User' if m['role'] == 'user' else 'Assistant'}: {m['content']}" for m in messages)


def chat_prompt_text(tokenizer: Any, prompt: str) -> str:
    """A user prompt in the model's chat format, ready for the assistant's answer
    (``User: …\\nAssistant:`` for models without a chat template)."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                             add_generation_prompt=True)
    return f"User: {prompt}\nAssistant:"
