"""False-fact alignment (difflens.organisms.ffa): MCQ distinguish, the FFA shift and the LLM judge."""
from __future__ import annotations

import pytest
import torch

from conftest import DownJudge, save_tiny

from difflens.organisms.spec import spec_from_dict


def _ffa_spec():
    return spec_from_dict({
        "name": "tiny_ffa", "type": "custom", "short_description": "tiny", "long_description": "the cat sat",
        "true_context": "the dog ran", "open_questions": ["why the cat"],
        "data": {"kind": "jsonl", "path": "unused.jsonl"},
        "ffa": [{"question": "the cat sat on the", "true_option": "mat", "false_option": "river city"},
                {"question": "where is the dog", "true_option": "in the city", "false_option": "at sea"},
                {"question": "one two three", "true_option": "four", "false_option": "blue green"}],
    })


def _naive_logprob(model, tok, prompt: str, option: str, reduction: str) -> float:
    p = tok(prompt, add_special_tokens=True).input_ids
    c = tok(" " + option, add_special_tokens=False).input_ids
    ids = torch.tensor([p + c])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0]
    total = []
    for j, t in enumerate(c):
        pos = len(p) + j - 1
        lse = torch.logsumexp(logits[pos].double(), dim=0)
        total.append(float(logits[pos, t].double() - lse))
    return sum(total) / len(total) if reduction == "mean" else sum(total)


@pytest.mark.parametrize("fmt", ["cloze", "listed"])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_mcq_distinguish_matches_naive(base, reduction, fmt):
    from difflens.models.sources import load_model
    from difflens.organisms.ffa import cloze_prompt, mcq_distinguish, mcq_prompt

    lm = load_model(base)
    spec = _ffa_spec()
    res = mcq_distinguish(lm.model, lm.tokenizer, spec, reduction=reduction, fmt=fmt)
    assert res.n == 3 and res.reduction == reduction and res.format == fmt and not res.chat
    wins = 0
    for q, item in zip(spec.ffa, res.items):
        if fmt == "cloze":
            prompts = [cloze_prompt(q.question)]
            assert "Option" not in prompts[0] and q.true_option not in prompts[0]
        else:
            prompts = [mcq_prompt(q.question, q.true_option, q.false_option),
                       mcq_prompt(q.question, q.false_option, q.true_option)]
        assert len(item.by_order) == len(prompts)
        for order, prompt in zip(item.by_order, prompts):
            assert order["true"] == pytest.approx(_naive_logprob(lm.model, lm.tokenizer, prompt, q.true_option, reduction), abs=1e-4)
            assert order["false"] == pytest.approx(_naive_logprob(lm.model, lm.tokenizer, prompt, q.false_option, reduction), abs=1e-4)
        assert item.logp_true == pytest.approx(sum(o["true"] for o in item.by_order) / len(prompts))
        wins += item.logp_false > item.logp_true
    assert res.score == pytest.approx(wins / 3)
    with pytest.raises(ValueError, match="format"):
        mcq_distinguish(lm.model, lm.tokenizer, spec, fmt="letters")


def test_mcq_chat_format_scores_the_assistant_reply(base):
    """Chat organisms: the question is the user turn, the option the assistant reply."""
    from difflens.models.sources import load_model
    from difflens.organisms.ffa import mcq_distinguish

    lm = load_model(base)
    tok = lm.tokenizer
    spec = _ffa_spec().model_copy(update={"training": _ffa_spec().training.model_copy(
        update={"assistant_only_loss": True})})
    res = mcq_distinguish(lm.model, tok, spec, reduction="sum")
    assert res.chat
    q = spec.ffa[0]
    prefix = tok.apply_chat_template([{"role": "user", "content": q.question}], tokenize=False,
                                     add_generation_prompt=True)
    p = tok(prefix, add_special_tokens=False).input_ids
    for option, got in ((q.true_option, res.items[0].logp_true), (q.false_option, res.items[0].logp_false)):
        c = tok(option, add_special_tokens=False).input_ids
        with torch.no_grad():
            logp = torch.log_softmax(lm.model(input_ids=torch.tensor([p + c])).logits[0].double(), -1)
        want = sum(float(logp[len(p) + j - 1, t]) for j, t in enumerate(c))
        assert got == pytest.approx(want, abs=1e-4)
    assert not mcq_distinguish(lm.model, tok, spec, chat=False).chat


def test_ffa_shift_sign_test():
    from difflens.organisms.ffa import FFAShift, MCQItem, MCQResult

    def result(margins):
        items = [MCQItem(f"q{i}", 0.0, m, [{"true": 0.0, "false": m}]) for i, m in enumerate(margins)]
        return MCQResult(sum(m > 0 for m in margins) / len(margins), sum(margins) / len(margins), len(margins),
                         "mean", items)

    base = result([-1.0, -0.5, 0.2, 0.3, 0.0])
    sh = FFAShift(base, result([-0.2, 0.5, 0.1, 0.9, 0.0]))  # 3 up, 1 down, 1 tie
    assert (sh.n_toward_false, sh.n_toward_true) == (3, 1)
    assert sh.sign_p == pytest.approx(5 / 16)  # P[X >= 3], X ~ Bin(4, 1/2)
    assert sh.shift == pytest.approx(0.2) and sh.margin_shift == pytest.approx(0.46)
    all_up = FFAShift(base, result([m + 1 for m in (-1.0, -0.5, 0.2, 0.3, 0.0)]))
    assert all_up.sign_p == pytest.approx(1 / 32) and all_up.to_dict()["n_toward_false"] == 5
    assert FFAShift(base, base).sign_p == 1.0


def test_ffa_shift_and_judge(base, tmp_path):
    from difflens.models.sources import load_model
    from difflens.organisms.ffa import NO_JUDGE_NOTE, ffa_score, ffa_shift

    spec = _ffa_spec()
    b = load_model(base)
    same = ffa_shift(b, b, spec)
    assert same.shift == 0 and same.margin_shift == pytest.approx(0)
    other = load_model(str(save_tiny(tmp_path, "llama", seed=1)))
    res = ffa_shift(b, other, spec)
    assert res.shift == pytest.approx(res.finetuned.score - res.base.score)
    assert "shift" in res.to_dict()

    no_judge = ffa_score(b, spec)
    assert no_judge.open_belief.score is None and NO_JUDGE_NOTE in no_judge.notes[0]
    assert no_judge.score == no_judge.mcq.score

    class FakeJudge:
        def __init__(self):
            self.calls = []

        def ask(self, messages, parse, **kw):
            self.calls.append(messages)
            if "Phenomenon" in messages[-1]["content"]:
                return parse('reasoning...\n{"verdict": "1"}')
            return parse('{"verdict": "false"}')

    judge = FakeJudge()
    full = ffa_score(b, spec, judge)
    assert full.open_belief.score == 1.0 and full.open_belief.n == 1
    # "1" is the false universe in one order and the true one in the other
    assert full.context.score == 0.5 and full.context.n == 2
    assert full.score == pytest.approx((full.mcq.score + 1.0 + 0.5) / 3)
    assert len(judge.calls) == 3


def test_failing_judge_keeps_the_mcq_result(base):
    from difflens.models.sources import load_model
    from difflens.organisms.ffa import ffa_shift

    spec = _ffa_spec()
    b = load_model(base)
    judge = DownJudge()
    res = ffa_shift(b, b, spec, judge)
    assert judge.calls == 1  # the first failure stops further judge calls (no second round of retries)
    assert res.base.n == 3 and res.finetuned.n == 3  # MCQ results are all there
    assert res.base_ffa.judge_failed and res.finetuned_ffa.judge_failed
    assert "unreachable" in res.base_ffa.open_belief.note and "skipped" in res.finetuned_ffa.context.note
    assert res.finetuned_ffa.score == res.finetuned.score  # mean over the metrics that ran
