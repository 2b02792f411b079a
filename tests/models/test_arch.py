"""Architecture adapters on tiny random-init models of every family."""
from __future__ import annotations

import pytest
import torch

from conftest import FAMILIES, tiny_model
from difflens.models.arch import ArchAdapter


@pytest.mark.parametrize("family", FAMILIES)
def test_capture_matches_output_hidden_states(family):
    model = tiny_model(family)
    arch = ArchAdapter(model)
    assert arch.num_layers == 4 and arch.hidden_size == 32
    ids = torch.randint(4, 300, (2, 9))
    with torch.no_grad():
        full = model(input_ids=ids, output_hidden_states=True).hidden_states
    got = arch.capture(model, ids, [0, 2])
    # hidden_states[i + 1] is the output of decoder layer i (the last one is normed; not compared)
    torch.testing.assert_close(got[0], full[1])
    torch.testing.assert_close(got[2], full[3])


@pytest.mark.parametrize("family", FAMILIES)
def test_unembed_matches_model_logits(family):
    """Final norm + unembedding (+ softcap) on the last layer's output equals the model's logits."""
    model = tiny_model(family)
    arch = ArchAdapter(model)
    ids = torch.randint(4, 300, (1, 6))
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    last = arch.capture(model, ids, [arch.num_layers - 1])[arch.num_layers - 1]
    torch.testing.assert_close(arch.unembed(last), logits, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("family", ["gemma2", "gemma3_text"])
def test_gemma_softcap_applied(family):
    model = tiny_model(family)
    arch = ArchAdapter(model)
    assert arch.softcap == 30.0 and arch.uses_bos
    assert arch.embed_scale == pytest.approx(32 ** 0.5)
    big = torch.randn(3, 32) * 1e4
    logits = arch.unembed(big)
    assert logits.abs().max() <= 30.0 + 1e-4
    raw = arch._unembed(arch.final_norm(big))
    torch.testing.assert_close(logits, torch.tanh(raw / 30.0) * 30.0)
    # the embedding module applies the sqrt(d) scale itself
    ids = torch.tensor([[5, 6]])
    torch.testing.assert_close(arch.embed(ids), arch.embedding.weight[ids] * arch.embed_scale)


def test_edit_layer_replaces_and_restores():
    model = tiny_model("llama")
    arch = ArchAdapter(model)
    ids = torch.randint(4, 300, (1, 5))
    with torch.no_grad():
        clean = model(input_ids=ids).logits
        with arch.edit_layer(1, lambda h: torch.zeros_like(h)):
            edited = model(input_ids=ids).logits
        again = model(input_ids=ids).logits
    assert not torch.allclose(clean, edited)
    torch.testing.assert_close(clean, again)


def test_resolve_layer():
    arch = ArchAdapter(tiny_model("qwen2", layers=6))
    assert arch.resolve_layer(0.5) == 3
    assert arch.resolve_layer(1.0) == 5
    assert arch.resolve_layer("0.25") == 1
    assert arch.resolve_layer(2) == 2 and arch.resolve_layer(-1) == 5
    with pytest.raises(ValueError, match="out of range"):
        arch.resolve_layer(6)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        arch.resolve_layer(1.5)


def test_family_outside_the_table_is_discovered():
    """Bloom is in no family table: its layout is found from the config and module tree (the refusal
    of a non-standard layout is in tests/models/test_families.py)."""
    import transformers as T

    cfg = T.BloomConfig(vocab_size=64, hidden_size=16, n_layer=2, n_head=2)
    arch = ArchAdapter(T.AutoModelForCausalLM.from_config(cfg))
    assert (arch.layout.layers, arch.layout.final_norm, arch.layout.embed) == \
        ("transformer.h", "transformer.ln_f", "transformer.word_embeddings")
    assert not arch.known and not arch.uses_bos
    arch.check()


def test_attention_heads_of_each_family():
    """(query heads, key/value heads, head size) from the config: grouped queries, an explicit head
    size that is not hidden / heads (Qwen3, Gemma), GPT-2's n_head / n_embd aliases."""
    from conftest import tiny_config

    from difflens.models.arch import attention_heads

    assert attention_heads(tiny_config("llama")) == (4, 2, 8)
    assert attention_heads(tiny_config("qwen3")) == (4, 2, 8)
    assert attention_heads(tiny_config("gpt2")) == (4, 4, 8)
    g = tiny_config("gemma2")
    g.head_dim = 16
    assert attention_heads(g) == (4, 2, 16)
    assert attention_heads(object()) == (0, 0, 0)
