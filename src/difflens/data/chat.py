"""Chat data: the embedded conversations (chatterbot-corpus, chitchat-dataset) and their rendering
in a model's chat template."""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Sequence

from ..errors import DataError
from .packages import data_package_dir

__all__ = ["chat_conversations", "render_chat", "chat_prompt_text", "is_chat", "ChatReply", "first_reply"]


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


def render_chat(tokenizer: Any, messages: Sequence[dict[str, str]], *, add_generation_prompt: bool = False) -> str:
    """A conversation as text in the model's chat template (plain ``User:``/``Assistant:`` lines if
    it has none); ``add_generation_prompt`` appends the header of the assistant's next turn."""
    if tokenizer is not None and getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(list(messages), tokenize=False,
                                             add_generation_prompt=add_generation_prompt)
    lines = [f"{'User' if m['role'] == 'user' else 'Assistant'}: {m['content']}" for m in messages]
    if add_generation_prompt:
        lines.append("Assistant:")
    return "\n".join(lines)


def is_chat(value: Any) -> bool:
    """Whether a record is a conversation: a non-empty list of messages (dicts with a ``role``)."""
    return (isinstance(value, list) and bool(value)
            and all(isinstance(m, dict) and isinstance(m.get("role"), str) for m in value))


@dataclass(frozen=True)
class ChatReply:
    """A conversation rendered up to and including one assistant reply.

    ``text[:start]`` is the context the reply follows (system prompt, earlier turns, the
    assistant header, and whatever the template puts between header and content);
    ``text[start:end]`` is the reply's content; ``text[end:]`` closes the turn.
    """

    text: str
    start: int
    end: int
    turn: int  # index of the reply in the message list


def first_reply(tokenizer: Any, messages: Sequence[dict[str, Any]]) -> ChatReply | None:
    """The conversation rendered up to its first assistant reply (the first assistant message with
    content that follows at least one other message), or None when it has no such reply.

    Later turns are not rendered (they cannot influence earlier positions under causal attention).
    The reply is located as the first occurrence of its content after the rendered context with
    the generation prompt, so that chat-template markup never counts as reply text.
    """
    msgs = list(messages)
    turn = next((i for i, m in enumerate(msgs) if i > 0 and m.get("role") == "assistant"
                 and isinstance(m.get("content"), str) and m["content"].strip()), None)
    if turn is None:
        return None
    content = msgs[turn]["content"]
    try:
        text = render_chat(tokenizer, msgs[:turn + 1])
        head = render_chat(tokenizer, msgs[:turn], add_generation_prompt=True)
    except Exception as e:  # noqa: BLE001 - jinja raises template-defined exception types
        raise DataError(f"the chat template cannot render the conversation {json.dumps(msgs[:turn + 1])[:200]}…: "
                        f"{e}") from e
    if not text.startswith(head):
        raise DataError("the chat template does not render conversations incrementally (the context with the "
                        "generation prompt is not a prefix of the conversation with the reply), so the start "
                        "of the assistant's reply cannot be located.")
    for needle in (content, content.strip()):
        at = text.find(needle, len(head))
        if at >= 0:
            return ChatReply(text, at, at + len(needle), turn)
    raise DataError("the chat template does not render the assistant's reply verbatim, so its start cannot be "
                    f"located (reply {content[:80]!r}).")


def chat_prompt_text(tokenizer: Any, prompt: str) -> str:
    """A user prompt in the model's chat format, ready for the assistant's answer
    (``User: …\\nAssistant:`` for models without a chat template)."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                             add_generation_prompt=True)
    return f"User: {prompt}\nAssistant:"
