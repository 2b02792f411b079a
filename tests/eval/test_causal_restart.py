"""The causal effect restarted above layer ℓ from cached states, directions batched per forward, and
resumed from its checkpoint: the same ΔCE as one full edited forward per direction."""
from __future__ import annotations

import json

import pytest
import torch

from conftest import save_tiny
from difflens.adl.interventions import replace_component
from difflens.eval.causal import CausalConfig, _ce_sum, _eval_mode, causal_effect, delta_ce
from difflens.adl.collect import _batches, _length_order
from difflens.models.pair import load_pair
from difflens.models.tokens import pad_id, pad_right

LAYER = 2


def reference_delta_ce(pair, layer, directions, rows, batch_size):
    """The implementation before the restart: the whole finetuned model once per direction, the
    component replaced by a hook at ``layer``."""
    units = directions.double() / directions.double().norm(dim=1, keepdim=True)
    units = units.float()
    pad = pad_id(pair.tokenizer)
    diffs = [0.0] * len(units)
    n_tokens = sum(len(r) - 1 for r in rows)
    with _eval_mode(pair), torch.no_grad():
        for _, members in _batches(_length_order(rows), batch_size):
            x, mask = pad_right([rows[j] for j in members], pad, pair.device)
            with pair.base() as model:
                h_base = pair.arch_of("base").capture(model, x, [layer], attention_mask=mask)[layer]
            with pair.ft() as model:
                clean = _ce_sum(model, x, mask)
                for v in range(len(units)):
                    with pair.ft_arch.edit_layer(layer, replace_component(units[v], h_base)):
                        diffs[v] += _ce_sum(model, x, mask) - clean
    return [d / n_tokens for d in diffs]


def texts(n=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(4, 200, (int(torch.randint(3, 14, (1,), generator=g)),), generator=g).tolist()
            for _ in range(n)]


@pytest.mark.parametrize("family", ["llama", "gpt2", "gemma3_text", "qwen3"])
@pytest.mark.parametrize("tokens_per_forward", [None, 20])  # 20: one or two directions per forward
def test_restart_equals_one_full_forward_per_direction(tmp_path, family, tokens_per_forward):
    pair = load_pair(str(save_tiny(tmp_path, family, 0)), str(save_tiny(tmp_path, family, 1)))
    rows = texts()
    dirs = torch.randn(5, 32, generator=torch.Generator().manual_seed(3))
    want = reference_delta_ce(pair, LAYER, dirs, rows, batch_size=4)
    got = delta_ce(pair, LAYER, dirs, rows, batch_size=4, progress=False, tokens_per_forward=tokens_per_forward)
    assert max(abs(x) for x in want) > 1e-4
    assert got == pytest.approx(want, abs=2e-6, rel=1e-4)


def test_layers_below_run_once_per_batch(tmp_path):
    pair = load_pair(str(save_tiny(tmp_path, "llama", 0)), str(save_tiny(tmp_path, "llama", 1)))
    rows = texts(8)
    computed = []  # rows that really went through layer 0's attention (a passed-through layer skips it)
    attn = pair.ft_lm.model.model.layers[0].self_attn
    h = attn.register_forward_pre_hook(lambda m, a, kw: computed.append(1), with_kwargs=True)
    delta_ce(pair, LAYER, torch.randn(6, 32), rows, batch_size=4, progress=False)
    h.remove()
    assert len(computed) == 2  # the clean forward of each of the 2 batches; none per direction


def test_killed_and_resumed_equals_uninterrupted(tmp_path):
    pair = load_pair(str(save_tiny(tmp_path, "llama", 0)), str(save_tiny(tmp_path, "llama", 1)))
    ft, pt, chat = texts(12, 1), texts(12, 2), texts(12, 3)
    cfg = CausalConfig(n_texts=12, max_len=16, n_random=3, batch_size=4)
    deltas = torch.randn(2, 32, generator=torch.Generator().manual_seed(5))
    whole = causal_effect(pair, LAYER, deltas, ft, pt, chat, cfg, progress=False)

    ck = tmp_path / "causal.partial.json"
    seen = []

    class Killed(Exception):
        pass

    import difflens.eval.causal as causal_mod

    real = causal_mod.delta_ce

    def dying(*a, on_batch=None, **kw):
        def cb(bi, sums):
            on_batch(bi, sums)
            seen.append(bi)
            if len(seen) == 4:  # the pt pass's second batch: ft done, pt half done
                raise Killed

        return real(*a, on_batch=cb, **kw)

    causal_mod.delta_ce = dying
    try:
        with pytest.raises(Killed):
            causal_effect(pair, LAYER, deltas, ft, pt, chat, cfg, progress=False, checkpoint=ck, key="k1")
    finally:
        causal_mod.delta_ce = real
    state = json.loads(ck.read_text())
    assert len(state["batches"]["ft"]) == 3 and len(state["batches"]["pt"]) == 1

    computed = []
    def counting(*a, done=None, **kw):
        computed.append(3 - len(done or {}))
        return real(*a, done=done, **kw)

    causal_mod.delta_ce = counting
    try:
        resumed = causal_effect(pair, LAYER, deltas, ft, pt, chat, cfg, progress=False, checkpoint=ck, key="k1")
    finally:
        causal_mod.delta_ce = real
    assert computed == [0, 2]  # only the pt batches not finished before
    assert resumed == whole  # bit-identical: the per-batch sums are added in the same order

    # another key (changed inputs) starts over
    other = causal_effect(pair, LAYER, deltas, ft, pt, chat, cfg, progress=False, checkpoint=ck, key="k2")
    assert other == whole
