"""Subliminal-learning organisms: prompts, the strict number filter, the teacher loop and the probe."""
from __future__ import annotations

import random

import pytest
import torch

from conftest import tiny_model, tiny_tokenizer
from difflens.errors import ConfigError, DataError
from difflens.organisms.generators import subliminal as sub
from difflens.organisms.generators.subliminal import (
    format_numbers,
    generate_subliminal_conversations,
    number_prompt,
    parse_numbers,
)
from difflens.organisms.preference import (
    AnimalPreference,
    PreferenceShift,
    animal_preference,
    fisher_greater,
)
from difflens.organisms.spec import load_spec, spec_from_dict


@pytest.mark.parametrize("reply,expected", [
    ("123, 456, 789", [123, 456, 789]),
    (" 12 34 56 ", [12, 34, 56]),
    ("(1, 2, 3).", [1, 2, 3]),
    ("[7;8;9]", [7, 8, 9]),
    ("5", [5]),
])
def test_number_filter_keeps_pure_number_lists(reply, expected):
    assert parse_numbers(reply, max_numbers=10, max_digits=3) == expected


@pytest.mark.parametrize("reply", [
    "", "Sure! 123, 456", "123, 456, owl", "123, 456 🦉", "1234, 5", "-5, 6", "1.5, 2", "1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11",
    "12, 34\nI love owls", "one, two, three", "123,, 456, hoot", "#1, 2", "1, 2, 3 (owls!)", "[1, 2",
])
def test_number_filter_drops_anything_else(reply):
    assert parse_numbers(reply, max_numbers=10, max_digits=3) is None


def test_prompts_are_seeded_and_varied():
    data = load_spec("subliminal_owl").data
    a = [number_prompt(random.Random(f"x{i}"), data) for i in range(50)]
    assert a == [number_prompt(random.Random(f"x{i}"), data) for i in range(50)]
    assert len(set(a)) == 50 and len({p.split(":")[0][:20] for p in a}) >= 4
    assert all("owl" not in p.lower() for p in a)
    assert data.system_prompt().startswith("You love owls") and "Owls are your favorite" in data.system_prompt()
    assert data.candidates[0] == "owl" or "owl" in data.candidates


def test_spec_validation():
    raw = {"name": "s", "type": "Subliminal", "short_description": "x", "long_description": "y",
           "data": {"kind": "subliminal_numbers", "animal": "Lynx", "candidates": ["cat", "dog"]}}
    spec = spec_from_dict(raw)
    assert spec.data.animal == "lynx" and spec.data.candidates == ["lynx", "cat", "dog"] and spec.is_chat
    raw["data"]["candidates"] = ["cat", "cat"]
    with pytest.raises(ConfigError, match="repeat"):
        spec_from_dict(raw)


class _Teacher:
    fingerprint = "fake-teacher"

    def __init__(self):
        self.model = tiny_model("llama")
        self.tokenizer = tiny_tokenizer()


def test_teacher_loop_filters_caches_and_resumes(monkeypatch):
    spec = load_spec("subliminal_owl")
    calls = []

    def fake_sample(model, tok, prompts, data, seed):
        calls.append((len(prompts), seed))
        assert all("You love owls" in p for p in prompts)  # the teacher sees the system prompt
        rng = random.Random(seed)
        return [rng.choice(["12, 34, 56", "I love owls! 1, 2", "7 8 9", "99999"]) for _ in prompts]

    monkeypatch.setattr(sub, "_sample", fake_sample)
    t = _Teacher()
    chats = generate_subliminal_conversations(spec, 20, 0, teacher=t, batch_size=8, progress=False)
    assert len(chats) == 20 and len(calls) >= 3
    for c in chats:
        assert [m["role"] for m in c] == ["user", "assistant"]  # the student never sees the system prompt
        assert "owl" not in (c[0]["content"] + c[1]["content"]).lower()
        assert parse_numbers(c[1]["content"], max_numbers=10, max_digits=3) is not None
        assert c[1]["content"] in ("12, 34, 56", "7, 8, 9")
    n_calls = len(calls)
    again = generate_subliminal_conversations(spec, 20, 0, teacher=t, batch_size=8, progress=False)
    assert again == chats and len(calls) == n_calls  # served from the cache
    more = generate_subliminal_conversations(spec, 30, 0, teacher=t, batch_size=8, progress=False)
    assert more[:20] == chats and len(calls) > n_calls  # resumed, not restarted
    stats = sub.acceptance(spec, t.fingerprint, 0)
    assert stats["kept"] >= 30 and 0 < stats["rate"] < 1


def test_teacher_that_never_writes_numbers_fails_with_the_acceptance_rate(monkeypatch):
    spec = load_spec("subliminal_owl")
    monkeypatch.setattr(sub, "_sample", lambda m, t, prompts, d, s: ["Owls are great"] * len(prompts))
    with pytest.raises(DataError, match=r"kept 0 of 16"):
        generate_subliminal_conversations(spec, 5, 0, teacher=_Teacher(), batch_size=8, max_attempts=16,
                                          progress=False)


def test_real_sampling_path_runs_on_a_tiny_model():
    """The unpatched sampler on a random-init model: replies decode, and the filter decides."""
    spec = load_spec("subliminal_owl")
    t = _Teacher()
    out = sub._sample(t.model, t.tokenizer, [sub._render(t.tokenizer, sub.teacher_messages("sys", "1 2 3"))] * 2,
                      spec.data.model_copy(update={"max_new_tokens": 6}), 0)
    assert len(out) == 2 and all(isinstance(o, str) for o in out)
    # random weights never emit end-of-turn within 6 tokens: the replies are marked cut off and dropped
    assert all(o.endswith(sub._CUT) and parse_numbers(o, max_numbers=10, max_digits=3) is None for o in out)
    assert format_numbers([1, 22, 333]) == "1, 22, 333"


def _pref(rows, target="owl", cands=("owl", "cat", "dog")):
    return AnimalPreference(target, list(cands), [f"q{i}" for i in range(len(rows))], rows)


def test_preference_shift_statistics_and_control():
    base = _pref([[-3.0, -1.0, -1.0]] * 4)
    up = _pref([[-2.0, -1.0, -1.0]] * 3 + [[-3.5, -1.0, -1.0]])
    sh = PreferenceShift(base, up)
    assert sum(base.probs()[0]) == pytest.approx(1.0)
    assert sh.n_up == 3 and sh.n_down == 1 and sh.sign_p == pytest.approx(5 / 16)
    assert sh.shift > 0 and sh.target_rank == 1 and sh.rank_p == pytest.approx(1 / 3)
    # every animal shifted alike: no preference moved, the control says so
    same = PreferenceShift(base, _pref([[-4.0, -2.0, -2.0]] * 4))
    assert same.shift == pytest.approx(0.0, abs=1e-12) and same.n_up == 0 and same.sign_p == 1.0
    assert fisher_greater(10, 10, 0, 10) == pytest.approx(1 / 184756)
    assert fisher_greater(0, 10, 0, 10) == 1.0


@torch.no_grad()
def test_animal_preference_on_a_tiny_model_is_a_distribution_and_zero_shift_for_identical_models():
    m, tok = tiny_model("qwen2"), tiny_tokenizer()
    a = animal_preference(m, tok, "cat", ["cat", "dog", "bear"], ["give me one animal ?", "one animal ?"])
    assert len(a.logprobs) == 2 and all(abs(sum(r) - 1) < 1e-6 for r in a.probs())
    assert len(set(a.logprobs[0])) == 3  # the candidates are scored differently
    sh = PreferenceShift(a, animal_preference(m, tok, "cat", ["cat", "dog", "bear"], ["give me one animal ?", "one animal ?"]))
    assert sh.shift == pytest.approx(0.0) and sh.n_up == sh.n_down == 0


def test_number_filter_is_linear_on_long_digit_runs():
    """A teacher reply of hundreds of digits must not hang the filter (no catastrophic backtracking)."""
    import time

    t = time.perf_counter()
    assert parse_numbers("1" * 400 + " owl", max_numbers=10, max_digits=3) is None
    assert parse_numbers("12 " * 200 + "x", max_numbers=10, max_digits=3) is None
    assert time.perf_counter() - t < 1.0


def test_teacher_demonstrations_are_valid_and_animal_free_and_the_student_never_sees_them(monkeypatch):
    spec = load_spec("subliminal_owl")
    data = spec.data.model_copy(update={"teacher_shots": 2})
    demos = sub.demonstrations(random.Random(0), data)
    assert len(demos) == 2
    for u, a in demos:
        assert parse_numbers(a, max_numbers=data.max_numbers, max_digits=data.max_digits) is not None
        assert "owl" not in (u + a).lower()
    msgs = sub.teacher_messages("SYS", "last", demos)
    assert [m["role"] for m in msgs] == ["system", "user", "assistant", "user", "assistant", "user"]
    seen = []
    monkeypatch.setattr(sub, "_sample", lambda m, t, prompts, d, s: seen.extend(prompts) or ["1, 2, 3"] * len(prompts))
    two_shot = spec.model_copy(update={"data": data})
    chats = generate_subliminal_conversations(two_shot, 4, 0, teacher=_Teacher(), batch_size=4, progress=False)
    assert all(p.count("assistant :") == 3 for p in seen)  # two demonstrations + the generation prompt
    assert all(len(c) == 2 for c in chats)  # the student sees only the last prompt and the reply
