"""Vocabulary mismatch: padding rows and added special tokens are accepted (lens and Patchscope read
the shared vocabulary only); a tokenizer whose ids mean other tokens is refused, naming them."""
from __future__ import annotations

import pytest
import torch

from conftest import save_tiny, tiny_tokenizer
from difflens.adl.collect import Collected
from difflens.adl.logit_lens import logit_lens
from difflens.adl.patchscope import patched_next_token_probs, unpatched_tokens
from difflens.errors import IncompatiblePairError
from difflens.models.pair import load_pair


def _resave(path, rows: int, tok=None) -> None:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path)
    model.resize_token_embeddings(rows)
    model.save_pretrained(path)
    if tok is not None:
        tok.save_pretrained(path)


def _collected(pair) -> Collected:
    torch.manual_seed(0)
    d = pair.arch.hidden_size
    return Collected("x", 2, torch.randn(3, d), torch.randn(3, d), torch.randn(3, d), 2.0, 2.0, 10)


def _reads_shared_vocab(pair) -> None:
    n = pair.vocab_size
    probs = patched_next_token_probs(pair, 2, torch.randn(pair.arch.hidden_size), [1.0, 5.0], 2.0)
    assert probs.shape[-1] == n and torch.allclose(probs.sum(-1), torch.ones(probs.shape[:-1]))
    lens = logit_lens(pair, _collected(pair), [0, 1], k=30)
    assert all(t.token_id < n for e in lens.entries for t in e.top_positive + e.top_negative)
    assert all(t.token_id < n for t in unpatched_tokens(pair))


def test_padding_rows_are_accepted_and_left_out(tmp_path):
    a, b = save_tiny(tmp_path, "llama", 0), save_tiny(tmp_path, "llama", 1)
    _resave(b, 576)  # e.g. a vocabulary padded to a multiple of 64 on one side only
    pair = load_pair(str(a), str(b))
    n_tok = len(tiny_tokenizer())
    assert pair.ft_lm.model.get_output_embeddings().weight.shape[0] == 576
    assert pair.vocab_size == n_tok  # < 512 rows of the base: its padding rows are left out too
    _reads_shared_vocab(pair)


def test_added_special_token_is_accepted(tmp_path):
    a, b = save_tiny(tmp_path, "gemma2", 0), save_tiny(tmp_path, "gemma2", 1)
    tok = tiny_tokenizer(bos=True)
    n = len(tok)
    tok.add_special_tokens({"additional_special_tokens": ["<|secret|>"]})
    assert tok.convert_tokens_to_ids("<|secret|>") == n
    _resave(b, 520, tok)
    pair = load_pair(str(a), str(b))
    assert pair.vocab_size == n
    _reads_shared_vocab(pair)


def test_matched_pair_keeps_every_row(tmp_path):
    pair = load_pair(str(save_tiny(tmp_path, "llama", 0)), str(save_tiny(tmp_path, "llama", 1)))
    assert pair.vocab_size == 512  # unchanged behaviour for a pair whose vocabularies agree


def test_different_tokenizer_is_refused_naming_tokens(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    a, b = save_tiny(tmp_path, "llama", 0), save_tiny(tmp_path, "llama", 1)
    vocab = dict(tiny_tokenizer().get_vocab())
    cake, oven = vocab.pop("cake"), vocab.pop("oven")
    vocab["pie"], vocab["stove"] = cake, oven  # the same ids mean other words
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>", pad_token="<pad>").save_pretrained(b)
    with pytest.raises(IncompatiblePairError) as e:
        load_pair(str(a), str(b))
    msg = str(e.value)
    assert "2 ids decode to different tokens" in msg
    assert f"id {cake}: 'cake' vs 'pie'" in msg and f"id {oven}: 'oven' vs 'stove'" in msg
