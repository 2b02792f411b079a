"""Corpora and sampling: chat records start at the assistant's reply, one BOS, plain text unchanged."""
from __future__ import annotations

import hashlib
import json
import random

import pytest

from conftest import WORDS, tiny_tokenizer
from difflens.data.chat import first_reply, render_chat
from difflens.data.corpora import Corpus, load_corpus, sample_ids
from difflens.errors import DataError

BOS = 2
BOS_TEMPLATE = ("{{ bos_token }}{% for m in messages %}{{ m['role'] }} : {{ m['content'] }} \n{% endfor %}"
                "{% if add_generation_prompt %}assistant : {% endif %}")


def conv(*turns):
    return [{"role": r, "content": c} for r, c in turns]


def words(rng, lo, hi):
    pool = [w for w in WORDS if w not in ("\n", "?", "", "->")]
    return " ".join(rng.choice(pool) for _ in range(rng.randint(lo, hi)))


def test_plain_text_sampling_is_unchanged(corpus_file):
    """Golden values computed with the sampler before chat sampling changed (the demo's data)."""
    corpus = load_corpus(str(corpus_file))
    assert not corpus.is_chat
    for bos_tok, bos, digest, skipped, seen in [(False, [], "4f8410827feb84f6", 21, 61),
                                                (True, [], "e48245495fd2f466", 5, 45),
                                                (False, [BOS], "e48245495fd2f466", 5, 45)]:
        s = sample_ids(corpus, tiny_tokenizer(bos=bos_tok), n=40, k=5, seed=0, max_len=5, bos=bos)
        assert hashlib.sha256(json.dumps(s.ids).encode()).hexdigest()[:16] == digest
        assert s.order_hash == digest  # = hash of the first k tokens, as recorded before
        assert (s.n_skipped, s.n_seen, s.n_no_reply) == (skipped, seen, 0)
        assert s.starts == [0] * 40


def test_chat_rows_are_context_then_reply():
    tok = tiny_tokenizer()
    rng = random.Random(1)
    convs = [conv(("user", words(rng, 1, 9)), ("assistant", words(rng, 5, 9)), ("user", "why"),
                  ("assistant", "one two")) for _ in range(20)]
    corpus = Corpus("c", convs + ["the cat sat on the mat and ran"])
    assert corpus.is_chat
    s = sample_ids(corpus, tok, n=100, k=5, seed=0, max_len=5)
    assert len(s.ids) == 21 and s.n_skipped == 0
    by_ids = {tuple(ids): st for ids, st in zip(s.ids, s.starts)}
    for c in convs:
        head = tok(render_chat(tok, c[:1], add_generation_prompt=True), add_special_tokens=False).input_ids
        reply = tok(c[1]["content"], add_special_tokens=False).input_ids
        assert by_ids[tuple(head + reply[:5])] == len(head)
    assert by_ids[tuple(tok("the cat sat on the").input_ids)] == 0  # a plain text in a chat corpus
    # longer windows stop at the end of the reply's content (never the end-of-turn markup)
    s = sample_ids(corpus, tok, n=100, k=5, seed=0, max_len=50)
    for ids, st in zip(s.ids, s.starts):
        if st:
            assert tok.decode(ids[st:]) in {c[1]["content"] for c in convs}


def test_short_replies_and_missing_replies_are_skipped_and_counted():
    tok = tiny_tokenizer()
    convs = [conv(("user", "hello"), ("assistant", "the cat")),  # 2 reply tokens < k
             conv(("user", "hello")),  # no reply
             conv(("user", "the cat sat on the mat"), ("assistant", "the dog")),  # long context, short reply
             conv(("user", "hello"), ("assistant", "the dog ran to the river"))]
    s = sample_ids(Corpus("c", convs), tok, n=10, k=3, seed=0, max_len=3)
    assert (len(s.ids), s.n_skipped, s.n_no_reply, s.n_seen) == (1, 2, 1, 4)


@pytest.mark.parametrize("template_bos", [True, False])
@pytest.mark.parametrize("tokenizer_bos", [True, False])
def test_exactly_one_bos(template_bos, tokenizer_bos):
    tok = tiny_tokenizer(bos=tokenizer_bos)
    if template_bos:
        tok.chat_template = BOS_TEMPLATE
    corpus = Corpus("c", [conv(("user", "hello"), ("assistant", "the dog ran to the river"))])
    # a model that wants BOS (Gemma): exactly one, whether the template or the policy writes it
    s = sample_ids(corpus, tok, n=1, k=3, seed=0, max_len=3, chat_bos=[BOS])
    assert s.ids[0][0] == BOS and s.ids[0].count(BOS) == 1
    assert tok.decode(s.ids[0][s.starts[0]:]) == "the dog ran"
    # default: the BOS a plain text starts with for this tokenizer
    s = sample_ids(corpus, tok, n=1, k=3, seed=0, max_len=3)
    assert s.ids[0].count(BOS) == int(template_bos or tokenizer_bos)
    # a model without BOS gets only what its template writes
    s = sample_ids(corpus, tok, n=1, k=3, seed=0, max_len=3, chat_bos=[])
    assert s.ids[0].count(BOS) == int(template_bos)


def test_chat_without_template_is_plain_text_with_the_bos_policy():
    tok = tiny_tokenizer(bos=True)
    tok.chat_template = None
    corpus = Corpus("c", [conv(("user", "hello"), ("assistant", "the dog ran to the river"))])
    s = sample_ids(corpus, tok, n=1, k=3, seed=0, max_len=3, chat_bos=[BOS])
    assert s.ids[0] == tok("User : hello \nAssistant : the dog ran").input_ids  # the tokenizer's own BOS
    assert s.ids[0].count(BOS) == 1 and tok.decode(s.ids[0][s.starts[0]:]) == "the dog ran"


def test_local_chat_files(tmp_path):
    m = conv(("user", "hello"), ("assistant", "the cat sat"))
    p = tmp_path / "chat.jsonl"
    p.write_text("\n".join(json.dumps(r) for r in [m, {"messages": m}, {"text": m}, {"text": "plain words"}]) + "\n")
    corpus = load_corpus(str(p))
    assert corpus.texts == [m, m, m, "plain words"] and corpus.is_chat
    j = tmp_path / "chat.json"
    j.write_text(json.dumps([{"messages": m}]))
    assert load_corpus(str(j)).texts == [m]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"messages": ["hello"]}) + "\n")
    with pytest.raises(DataError, match="bad.jsonl record 0 is not a conversation"):
        load_corpus(str(bad))


def test_embedded_chat_is_sampled_from_replies():
    tok = tiny_tokenizer()
    corpus = load_corpus("chat")
    assert corpus.is_chat
    s = sample_ids(corpus, tok, n=50, k=2, seed=0, max_len=2)
    assert len(s.ids) == 50 and all(st > 0 for st in s.starts)
    assert len({tuple(ids[:st]) for ids, st in zip(s.ids, s.starts)}) > 10  # contexts differ per sample
    replies: dict[tuple[int, ...], set[tuple[int, ...]]] = {}  # context tokens -> first reply tokens
    for c in corpus.texts:
        r = first_reply(tok, c)
        if r is not None:
            ctx = tuple(tok(r.text[:r.start], add_special_tokens=False).input_ids)
            replies.setdefault(ctx, set()).add(tuple(tok(r.text[r.start:r.end], add_special_tokens=False).input_ids[:2]))
    for ids, st in zip(s.ids, s.starts):
        assert tuple(ids[st:]) in replies[tuple(ids[:st])]
        assert tok.decode(ids[st - 1:st]) == ":"  # the end of the "assistant :" header


@pytest.mark.integration
def test_smollm2_positions_start_at_the_reply():
    from transformers import AutoTokenizer

    from difflens.models.sources import materialize_embedded

    tok = AutoTokenizer.from_pretrained(str(materialize_embedded("smollm2-135m-instruct")))
    reply = "Paris is the capital of France."
    corpus = Corpus("c", [conv(("user", "What is the capital of France?"), ("assistant", reply))])
    s = sample_ids(corpus, tok, n=1, k=5, seed=0, max_len=5)
    ids, st = s.ids[0], s.starts[0]
    im_start = tok.convert_tokens_to_ids("<|im_start|>")
    assert ids[0] == im_start and ids[1] != im_start  # the template's own first token, once
    assert ids[st] != im_start and tok.decode(ids[:st]).endswith("<|im_start|>assistant\n")
    assert ids[st:] == tok(reply, add_special_tokens=False).input_ids[:5]
    assert tok.decode(ids[st:st + 1]) == "Paris"
