"""Chat rendering: locating the first assistant reply in a rendered conversation."""
from __future__ import annotations

import pytest

from conftest import tiny_tokenizer
from difflens.data.chat import first_reply, is_chat, render_chat
from difflens.errors import DataError


def conv(*turns):
    return [{"role": r, "content": c} for r, c in turns]


def test_first_reply_is_the_first_assistant_turn_after_the_context():
    tok = tiny_tokenizer()
    msgs = conv(("user", "tell me a story"), ("assistant", "the king ran"), ("user", "why"), ("assistant", "one two"))
    r = first_reply(tok, msgs)
    assert r.turn == 1
    assert r.text == render_chat(tok, msgs[:2])  # later turns are not rendered
    assert r.text[:r.start] == render_chat(tok, msgs[:1], add_generation_prompt=True)
    assert r.text[r.start:r.end] == "the king ran"


def test_reply_text_inside_the_header_is_not_taken_for_the_reply():
    tok = tiny_tokenizer()  # the template writes "assistant : " before the reply
    r = first_reply(tok, conv(("user", "hello"), ("assistant", "a")))
    assert r.text[:r.start].endswith("assistant : ") and r.text[r.start:r.end] == "a"


def test_conversations_without_a_reply():
    tok = tiny_tokenizer()
    assert first_reply(tok, conv(("user", "hello"))) is None
    assert first_reply(tok, conv(("assistant", "hello"))) is None  # nothing before it
    assert first_reply(tok, conv(("user", "hello"), ("assistant", "  "))) is None  # empty reply
    r = first_reply(tok, conv(("assistant", "hi"), ("user", "hello"), ("assistant", "the cat")))
    assert r.turn == 2 and r.text[r.start:r.end] == "the cat"


def test_without_a_template_plain_lines():
    tok = tiny_tokenizer()
    tok.chat_template = None
    msgs = conv(("user", "hello"), ("assistant", "the cat sat"))
    assert render_chat(tok, msgs[:1], add_generation_prompt=True) == "User: hello\nAssistant:"
    r = first_reply(tok, msgs)
    assert r.text == "User: hello\nAssistant: the cat sat" and r.text[r.start:] == "the cat sat"


def test_templates_that_trim_or_do_not_render_incrementally():
    tok = tiny_tokenizer()
    tok.chat_template = ("{% for m in messages %}{{ m['role'] }} : {{ m['content'] | trim }} \n{% endfor %}"
                         "{% if add_generation_prompt %}assistant : {% endif %}")
    r = first_reply(tok, conv(("user", "hello"), ("assistant", "  the cat \n")))
    assert r.text[r.start:r.end] == "the cat"
    tok.chat_template = ("{% for m in messages %}{{ m['role'] }} : {{ m['content'] }} \n{% endfor %}"
                         "{% if add_generation_prompt %}bot : {% endif %}")
    with pytest.raises(DataError, match="incrementally"):
        first_reply(tok, conv(("user", "hello"), ("assistant", "the cat")))
    tok.chat_template = "{% for m in messages %}{{ m['role'] }} : {{ m['content'] | upper }} \n{% endfor %}"
    with pytest.raises(DataError, match="verbatim"):
        first_reply(tok, conv(("user", "hello"), ("assistant", "the cat")))


def test_is_chat():
    assert is_chat(conv(("user", "x")))
    assert not is_chat([]) and not is_chat("text") and not is_chat([{"content": "x"}]) and not is_chat(["x"])
