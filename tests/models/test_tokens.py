"""Tokens: the BOS policy of each family, chat prompts without a doubled BOS, padding."""
from __future__ import annotations


from conftest import tiny_model, tiny_tokenizer
from difflens.models.arch import ArchAdapter
from difflens.models.tokens import bos_prefix_ids, chat_prompt_ids, encode, pad_id, pad_left, pad_right


def test_bos_policy():
    gemma = ArchAdapter(tiny_model("gemma2"))
    llama = ArchAdapter(tiny_model("llama"))
    tok_nobos = tiny_tokenizer(bos=False)
    tok_bos = tiny_tokenizer(bos=True)
    assert bos_prefix_ids(tok_nobos, gemma) == [2]  # Gemma always starts with BOS
    assert bos_prefix_ids(tok_bos, gemma) == []  # ...which its tokenizer already adds
    assert bos_prefix_ids(tok_nobos, llama) == []
    assert encode(tok_nobos, gemma, "the cat")[0] == 2
    assert encode(tok_bos, gemma, "the cat").count(2) == 1


def test_chat_prompt_ids_never_double_bos():
    gemma = ArchAdapter(tiny_model("gemma2"))
    llama = ArchAdapter(tiny_model("llama"))
    tok = tiny_tokenizer(bos=False)  # template without BOS
    ids = chat_prompt_ids(tok, gemma, "tell me a story")
    assert ids[0] == 2 and ids.count(2) == 1  # Gemma gets its BOS once
    plain = chat_prompt_ids(tok, llama, "tell me a story")
    assert 2 not in plain
    tok.chat_template = "<bos>" + tok.chat_template  # a template that emits BOS itself
    ids = chat_prompt_ids(tok, gemma, "tell me a story")
    assert ids[0] == 2 and ids.count(2) == 1
    assert ids[1:] == plain


def test_padding_right_and_left():
    rows = [[5, 6, 7], [8]]
    ids, mask = pad_right(rows, 1)
    assert ids.tolist() == [[5, 6, 7], [8, 1, 1]] and mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    ids, mask = pad_left(rows, 1)
    assert ids.tolist() == [[5, 6, 7], [1, 1, 8]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    assert pad_id(tiny_tokenizer()) == 1
