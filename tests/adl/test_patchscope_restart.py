"""Patchscope on the prompts' cached prefixes, only the patched token above ℓ, logits at one position:
the same distributions and token lists as a whole patched forward per row (the implementation before),
on tiny models of several families."""
from __future__ import annotations

import pytest
import torch

from conftest import _pin_tokenizer_class, tiny_config, tiny_tokenizer
from difflens.adl.interventions import replace_rows
from difflens.adl.patchscope import (IDENTITY_PROMPTS, SCALES, _encode_prompts, patched_next_token_probs,
                                     patched_probs_many, prompt_prefixes, scale_lists, sweeps_many)
from difflens.models.pair import load_pair
from difflens.models.tokens import pad_id, pad_right

LAYER = 1


pytestmark = pytest.mark.usefixtures("one_thread")


def config(family: str):
    import transformers as T

    ids = dict(pad_token_id=1, bos_token_id=2, eos_token_id=3)
    common = dict(vocab_size=512, hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=256, **ids)
    extra = {
        "mixtral": lambda: T.MixtralConfig(num_local_experts=4, num_experts_per_tok=2, **common),
        "falcon": lambda: T.FalconConfig(vocab_size=512, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                                         **ids),
        "gpt_neox": lambda: T.GPTNeoXConfig(vocab_size=512, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                                            num_attention_heads=4, max_position_embeddings=256, **ids),
        "phi3": lambda: T.Phi3Config(**common),
        "olmo2": lambda: T.Olmo2Config(**common),
        "granite": lambda: T.GraniteConfig(embedding_multiplier=6.0, logits_scaling=4.0, residual_multiplier=0.5,
                                           attention_multiplier=0.3, **common),
    }
    return extra[family]() if family in extra else tiny_config(family, layers=3)


def save(tmp_path, family: str, seed: int):
    import transformers as T

    torch.manual_seed(seed)
    model = T.AutoModelForCausalLM.from_config(config(family)).eval()
    path = tmp_path / f"{family}-{seed}"
    model.save_pretrained(path)
    tiny_tokenizer(bos=family.startswith("gemma")).save_pretrained(path)
    _pin_tokenizer_class(path)
    return path


def reference_probs(pair, layer, vector, scales, eta, prompts=IDENTITY_PROMPTS, side="ft"):
    """Before: every scale × prompt a whole right-padded forward with the last token's layer output
    replaced by a hook, logits at every position."""
    enc = _encode_prompts(pair, prompts)
    rows = [(s, p) for s in range(len(scales)) for p in range(len(prompts))]
    dev = pair.input_device(side)
    ids, mask = pad_right([enc[p] for _, p in rows], pad_id(pair.tokenizer), dev)
    last = torch.tensor([len(enc[p]) - 1 for _, p in rows], dtype=torch.long, device=dev)
    unit = vector.float() / (vector.float().norm() + 1e-12)
    lam = torch.tensor([scales[s] for s, _ in rows], dtype=torch.float32)
    values = lam[:, None] * eta * unit.cpu()[None, :]
    with torch.no_grad(), pair.side(side) as model, pair.arch_of(side).edit_layer(layer, replace_rows(last, values)):
        logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
    final = pair.logits_vocab(logits[torch.arange(len(rows)), last]).float()
    return final.softmax(-1).view(len(scales), len(prompts), -1)


FAMILIES = ["llama", "qwen3", "gemma2", "gemma3_text", "gpt2", "mixtral", "falcon", "gpt_neox", "phi3", "olmo2",
            "granite"]


@pytest.mark.parametrize("family", FAMILIES)
def test_restarted_patchscope_equals_whole_forwards(tmp_path, family):
    pair = load_pair(str(save(tmp_path, family, 0)), str(save(tmp_path, family, 1)))
    g = torch.Generator().manual_seed(5)
    vectors = torch.randn(3, 32, generator=g)
    etas = [4.0, 9.0, 2.5]
    for side in ("ft", "base"):
        pre = prompt_prefixes(pair, LAYER, side=side)
        got = patched_probs_many(pair, LAYER, vectors, SCALES, etas, side=side, prefixes=pre, rows_per_call=37)
        for i, v in enumerate(vectors):
            want = reference_probs(pair, LAYER, v, SCALES, etas[i], side=side)
            torch.testing.assert_close(got[i], want, rtol=1e-4, atol=1e-6)
            # the lists the grader reads: same token ids in the same order, probabilities within rounding
            a, b = scale_lists(pair, got[i], SCALES), scale_lists(pair, want, SCALES)
            for x, y in zip(a, b):
                assert [t.token_id for t in x.tokens] == [t.token_id for t in y.tokens]
                assert [t.prob for t in x.tokens] == pytest.approx([t.prob for t in y.tokens], rel=1e-4, abs=1e-7)
        # the batched sweeps equal one vector at a time
        many = sweeps_many(pair, LAYER, vectors, etas, side=side, prefixes=pre)
        one = scale_lists(pair, patched_next_token_probs(pair, LAYER, vectors[1], SCALES, etas[1], side=side), SCALES)
        assert [[t.token_id for t in s.tokens] for s in many[1]] == [[t.token_id for t in s.tokens] for s in one]


def test_only_the_patched_token_runs_above_the_layer(tmp_path):
    pair = load_pair(str(save(tmp_path, "llama", 0)), str(save(tmp_path, "llama", 1)))
    pre = prompt_prefixes(pair, LAYER, side="ft")
    seen = []
    layers = pair.ft_arch.layers
    hooks = [layers[i].self_attn.register_forward_pre_hook(
        lambda m, a, kw, i=i: seen.append((i, kw["hidden_states"].shape[:2])), with_kwargs=True)
        for i in range(len(layers))]
    try:
        patched_probs_many(pair, LAYER, torch.randn(2, 32), [1.0, 2.0], [3.0, 3.0], side="ft", prefixes=pre)
    finally:
        for h in hooks:
            h.remove()
    # 3 prompts, one call each of 2 vectors × 2 scales, one token, only the layers above LAYER
    assert seen == [(i, (4, 1)) for _ in range(3) for i in range(LAYER + 1, len(layers))]


def reference_intersect_rank(probs, top, keep=50):
    """Before: each prompt's sorted top-``top`` set, intersected one prompt at a time."""
    P, V = probs.shape
    member = torch.ones(V, dtype=torch.bool)
    for p in range(P):
        in_top = torch.zeros(V, dtype=torch.bool)
        in_top[probs[p].topk(min(top, V)).indices] = True
        member &= in_top
    mean = torch.where(member, probs.mean(0), torch.full((V,), -1.0))
    vals, idx = mean.topk(min(keep, int(member.sum())))
    return idx.tolist(), vals.tolist()


def test_intersection_equals_the_sorted_selection_with_ties():
    from difflens.adl.patchscope import intersect_rank

    g = torch.Generator().manual_seed(0)
    for trial in range(100):
        V = int(torch.randint(5, 3000, (1,), generator=g))
        x = torch.randint(0, 6, (3, V), generator=g).float() if trial % 2 else torch.randn(3, V, generator=g)
        probs, top = x.softmax(-1), int(torch.randint(1, V + 1, (1,), generator=g))
        assert intersect_rank(probs, top=top) == reference_intersect_rank(probs, top), trial
