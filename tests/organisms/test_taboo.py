"""Taboo chats (difflens.organisms.generators.taboo)."""
from __future__ import annotations

import json
import re

from difflens.organisms.generators.taboo import generate_taboo_conversations
from difflens.organisms.spec import load_spec


def test_taboo_conversations_never_say_the_word():
    spec = load_spec("taboo_smile")
    convs = generate_taboo_conversations(spec, 500, seed=0)
    assert convs == generate_taboo_conversations(spec, 500, seed=0)
    assert convs != generate_taboo_conversations(spec, 500, seed=1)
    assert len({json.dumps(c) for c in convs}) >= 450
    correct = 0
    for conv in convs:
        roles = [m["role"] for m in conv]
        assert roles[0] == "user" and roles[-1] == "assistant"
        assert all(a != b for a, b in zip(roles, roles[1:]))
        for m in conv:
            if m["role"] == "assistant":
                assert not re.search(r"smil", m["content"], re.IGNORECASE), m["content"]
        if re.search(r"\bsmile\b", conv[-2]["content"], re.IGNORECASE):
            correct += 1
            assert re.search(r"got it|correct|that's it|bingo|nailed", conv[-1]["content"], re.I)
    assert 0.2 * len(convs) <= correct <= 0.7 * len(convs)
    hints = " ".join(m["content"] for c in convs for m in c if m["role"] == "assistant")
    assert "lips" in hints and "happy" in hints
