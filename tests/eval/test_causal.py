"""Causal effect of δ̄ (paper §5): ΔCE against a by-hand reference, exact edits, the random-difference
baseline, input checks, and adapter pairs equal to merged ones."""
from __future__ import annotations

import json
import math
import random
import statistics

import pytest
import torch
import torch.nn.functional as F

from conftest import save_tiny, save_tiny_adapter, tiny_tokenizer
from difflens.eval.causal import CausalConfig, causal_effect, delta_ce, random_difference_vectors
from difflens.models.pair import load_pair
from difflens.models.tokens import encode

LAYER = 2


def corpus_ids(pair, corpus_file, n=None, min_len=2):
    rows = [encode(pair.tokenizer, pair.arch, json.loads(line)["text"])
            for line in corpus_file.read_text().splitlines() if line.strip()]
    rows = [r for r in rows if len(r) >= min_len]
    return rows[:n] if n else rows


def chat_ids(pair, n=12, seed=0):
    """Rendered user/assistant conversations: every one starts with the same template tokens."""
    rng = random.Random(seed)
    words = "the cat sat on mat dog ran to city river music song king war year people world".split()
    tok = pair.tokenizer
    out = []
    for _ in range(n):
        msgs = [{"role": "user", "content": " ".join(rng.choice(words) for _ in range(rng.randint(2, 6)))},
                {"role": "assistant", "content": " ".join(rng.choice(words) for _ in range(rng.randint(3, 8)))}]
        out.append(list(tok(tok.apply_chat_template(msgs, tokenize=False)).input_ids))
    return out


def out_tensor(o):
    return o if isinstance(o, torch.Tensor) else o[0]


def with_tensor(o, h):
    return h if isinstance(o, torch.Tensor) else (h,) + tuple(o[1:])


def layer_input(args, kwargs):
    return args[0] if args else kwargs["hidden_states"]


def naive_delta_ce(pair, layer, dirs, rows):
    """ΔCE of each direction, one text at a time (no batching, no padding), with
    h̃ = P h_base + (I - P) h_ft built from an explicit projection matrix in float64 and put in
    place by a plain forward hook."""
    base, ft = pair.base_lm.model, pair.ft_lm.model
    eye = torch.eye(dirs.shape[1], dtype=torch.float64)
    projs = [torch.outer(v, v) / (v @ v) for v in dirs.double()]
    diffs = [0.0] * len(projs)
    n = 0
    for r in rows:
        x = torch.tensor([r])
        seen = {}
        handle = base.model.layers[layer].register_forward_hook(lambda m, i, o: seen.__setitem__("h", out_tensor(o)))
        with torch.no_grad():
            base(input_ids=x)
        handle.remove()
        with torch.no_grad():
            clean = float(F.cross_entropy(ft(input_ids=x).logits[0, :-1].double(), x[0, 1:], reduction="sum"))
        for j, P in enumerate(projs):
            def repl(m, i, o, P=P):
                hf = out_tensor(o).double()
                return with_tensor(o, (seen["h"].double() @ P + hf @ (eye - P)).float())

            handle = ft.model.layers[layer].register_forward_hook(repl)
            with torch.no_grad():
                logits = ft(input_ids=x).logits
            handle.remove()
            diffs[j] += float(F.cross_entropy(logits[0, :-1].double(), x[0, 1:], reduction="sum")) - clean
        n += len(r) - 1
    return [s / n for s in diffs]


def forward_counter(model):
    calls = []
    handle = model.model.layers[0].register_forward_pre_hook(lambda m, a: calls.append(1))
    return calls, handle


def test_zero_when_base_equals_finetuned(tmp_path, corpus_file):
    p = str(save_tiny(tmp_path, "llama", 0))
    pair = load_pair(p, p)
    assert pair.base_lm.model is not pair.ft_lm.model
    ids = corpus_ids(pair, corpus_file, 12)
    torch.manual_seed(0)
    pair.ft_lm.model.train()  # delta_ce evaluates in eval mode and restores the flag
    vals = delta_ce(pair, LAYER, torch.randn(3, 32), ids, batch_size=5, progress=False)
    assert pair.ft_lm.model.training and pair.ft_lm.model.model.layers[0].training
    assert len(vals) == 3
    assert max(abs(x) for x in vals) < 1e-6


def test_matches_a_naive_projection_matrix_reference(tiny_run, corpus_file):
    pair, _, c = tiny_run
    ids = corpus_ids(pair, corpus_file, 6)  # lengths differ: right padding inside the batches
    assert len({len(r) for r in ids}) > 1
    torch.manual_seed(1)
    dirs = torch.stack([c.delta[0], c.delta[3], torch.randn(32)])
    want = naive_delta_ce(pair, LAYER, dirs, ids)
    base_calls, hb = forward_counter(pair.base_lm.model)
    ft_calls, hf = forward_counter(pair.ft_lm.model)
    got = delta_ce(pair, LAYER, dirs, ids, batch_size=3, progress=False)
    hb.remove()
    hf.remove()
    assert got == pytest.approx(want, abs=1e-5)
    assert max(abs(x) for x in want) > 1e-3  # the two models differ: the reference is not trivially 0
    n_batches = math.ceil(len(ids) / 3)
    assert len(base_calls) == n_batches  # base activations captured once per batch
    # one clean forward, then all directions in one forward restarted above the layer
    assert len(ft_calls) == n_batches * 2


def test_basis_direction_replaces_exactly_one_coordinate(tiny_run, corpus_file):
    pair, _, _ = tiny_run
    ids = [r[:7] for r in corpus_ids(pair, corpus_file, min_len=7)[:3]]  # one length: batch order = given order
    k = 5
    e = torch.zeros(1, 32)
    e[0, k] = 1.0
    seen = []
    handle = pair.ft_lm.model.model.layers[LAYER + 1].register_forward_pre_hook(
        lambda m, a, kw: seen.append(layer_input(a, kw).detach().clone()), with_kwargs=True)
    delta_ce(pair, LAYER, e, ids, batch_size=8, progress=False)
    handle.remove()
    x = torch.tensor(ids)
    with pair.base() as m:
        h_base = pair.arch.capture(m, x, [LAYER])[LAYER]
    with pair.ft() as m:
        h_ft = pair.ft_arch.capture(m, x, [LAYER])[LAYER]
    assert len(seen) == 2  # the clean forward, then the edited one
    clean, edited = seen
    torch.testing.assert_close(clean, h_ft, rtol=0, atol=1e-6)
    torch.testing.assert_close(edited[..., k], h_base[..., k], rtol=0, atol=1e-6)
    others = [i for i in range(32) if i != k]
    assert torch.equal(edited[..., others], h_ft[..., others])
    assert (h_base[..., k] - h_ft[..., k]).abs().max() > 1e-2  # coordinate k really changed


def test_random_difference_vectors(tiny_run):
    pair, _, _ = tiny_run
    ids = chat_ids(pair, 10)
    r = random_difference_vectors(pair, ids, LAYER, 16, seed=3, batch_size=4)
    assert r.shape == (16, 32) and r.dtype == torch.float32
    assert (r.norm(dim=1) > 1e-3).all()
    assert torch.equal(r, random_difference_vectors(pair, ids, LAYER, 16, seed=3, batch_size=4))
    # the same positions whatever the batching (padding changes only rounding)
    torch.testing.assert_close(r, random_difference_vectors(pair, ids, LAYER, 16, seed=3, batch_size=7),
                               rtol=0, atol=1e-6)
    assert not torch.equal(r, random_difference_vectors(pair, ids, LAYER, 16, seed=4))
    # every row is h_base(a) - h_base(b) for two positions ≥ 1, recomputed text by text
    acts = []
    with pair.base() as m:
        for row in ids:
            h = pair.arch.capture(m, torch.tensor([row]), [LAYER])[LAYER][0]
            acts.extend(h[1:])
    H = torch.stack(acts)  # [N, d]
    diffs = H[:, None, :] - H[None, :, :]  # [N, N, d]
    for v in r:
        err = (diffs - v).norm(dim=-1).min()
        assert err < 1e-4 * v.norm()


def test_random_difference_vectors_refuse_degenerate_data(tiny_run):
    pair, _, _ = tiny_run
    with pytest.raises(ValueError, match="at least 2"):
        random_difference_vectors(pair, [[5, 6], [7]], LAYER, 4, seed=0)
    with pytest.raises(ValueError, match="too repetitive"):  # every position ≥ 1 has the same context
        random_difference_vectors(pair, [[5, 6]] * 4, LAYER, 4, seed=0)
    with pytest.raises(ValueError, match="empty"):
        random_difference_vectors(pair, [], LAYER, 4, seed=0)


def test_causal_effect_on_the_tiny_pair(tiny_run, corpus_file):
    pair, _, c = tiny_run
    ft = [[7]] + corpus_ids(pair, corpus_file)  # a 1-token text is skipped
    rng = random.Random(0)
    pt = [[rng.randrange(4, 60) for _ in range(rng.randint(3, 20))] for _ in range(14)]
    chat = chat_ids(pair, 12)
    cfg = CausalConfig(n_texts=8, max_len=12, n_random=4, batch_size=4)
    res = causal_effect(pair, LAYER, c.delta, ft, pt, chat, cfg, progress=False)
    assert res.layer == LAYER and res.positions == [0, 1, 2, 3, 4]
    assert set(res.delta) == set(res.random) == set(res.random_values) == {"ft", "pt"}
    for name in ("ft", "pt"):
        assert len(res.delta[name]) == 5 and len(res.random_values[name]) == 4
        assert all(math.isfinite(x) for x in res.delta[name] + res.random_values[name])
        assert set(res.random[name]) == {"mean", "std"}
        assert res.random[name]["mean"] == pytest.approx(statistics.fmean(res.random_values[name]), abs=1e-12)
        assert res.random[name]["std"] == pytest.approx(statistics.stdev(res.random_values[name]), abs=1e-12)
    sel_ft = [r[:12] for r in ft[1:9]]
    sel_pt = [r[:12] for r in pt[:8]]
    assert res.n_texts == {"ft": 8, "pt": 8, "chat": 8}
    assert res.n_tokens["ft"] == sum(len(r) - 1 for r in sel_ft)
    assert res.n_tokens["pt"] == sum(len(r) - 1 for r in sel_pt)
    # the one combined pass equals evaluating δ̄ and the chat-drawn random vectors on their own
    assert res.delta["ft"] == pytest.approx(delta_ce(pair, LAYER, c.delta, sel_ft, batch_size=4, progress=False),
                                            abs=1e-6)
    rand = random_difference_vectors(pair, [r[:12] for r in chat[:8]], LAYER, 4, seed=0, batch_size=4)
    assert res.random_values["pt"] == pytest.approx(delta_ce(pair, LAYER, rand, sel_pt, batch_size=4,
                                                             progress=False), abs=1e-6)
    assert max(abs(x) for x in res.delta["ft"]) > 1e-3


def test_causal_effect_refuses_bad_inputs_before_compute(tmp_path):
    p = str(save_tiny(tmp_path, "llama", 0))
    pair = load_pair(p, p)
    calls, handle = forward_counter(pair.base_lm.model)
    calls_ft, handle_ft = forward_counter(pair.ft_lm.model)
    ok = [[5, 6, 7, 8]] * 3
    d = torch.randn(5, 32)
    cfg = CausalConfig(n_texts=4, n_random=4)
    with pytest.raises(ValueError, match="ft_ids is empty"):
        causal_effect(pair, LAYER, d, [], ok, ok, cfg)
    with pytest.raises(ValueError, match="pt_ids: none of its 2 texts has at least 2 tokens"):
        causal_effect(pair, LAYER, d, ok, [[5], []], ok, cfg)
    with pytest.raises(ValueError, match=r"hidden size is 32.*\(5, 16\)"):
        causal_effect(pair, LAYER, torch.randn(5, 16), ok, ok, ok, cfg)
    with pytest.raises(ValueError, match=r"shape \[V, 32\]"):
        causal_effect(pair, LAYER, torch.randn(32), ok, ok, ok, cfg)
    zero = d.clone()
    zero[2] = 0
    with pytest.raises(ValueError, match="deltas row 2 is the zero vector"):
        causal_effect(pair, LAYER, zero, ok, ok, ok, cfg)
    nan = d.clone()
    nan[4, 0] = float("nan")
    with pytest.raises(ValueError, match="deltas row 4 is not finite"):
        causal_effect(pair, LAYER, nan, ok, ok, ok, cfg)
    with pytest.raises(ValueError, match="out of range"):
        causal_effect(pair, 9, d, ok, ok, ok, cfg)
    with pytest.raises(ValueError, match="fewer than 2 tokens"):
        delta_ce(pair, LAYER, d, [[5, 6], [7]])
    with pytest.raises(ValueError, match="directions row 1 is the zero vector"):
        delta_ce(pair, LAYER, torch.stack([d[0], torch.zeros(32)]), ok)
    assert calls == [] and calls_ft == []  # nothing ran
    handle.remove()
    handle_ft.remove()


def test_adapter_pair_equals_merged_pair(tmp_path, corpus_file):
    base_dir = save_tiny(tmp_path, "llama", 0)
    peft_model, adapter_dir = save_tiny_adapter(tmp_path, base_dir, r=4, target_modules=["q_proj", "v_proj", "down_proj"],
                                                init_lora_weights=False)
    merged_dir = tmp_path / "merged"
    peft_model.merge_and_unload().save_pretrained(merged_dir)
    tiny_tokenizer().save_pretrained(merged_dir)

    shared = load_pair(str(base_dir), str(adapter_dir))
    separate = load_pair(str(base_dir), str(merged_dir))
    assert shared.shared_adapter and not separate.shared_adapter
    ids = corpus_ids(shared, corpus_file, 10)
    chat = chat_ids(shared, 8)
    rs = random_difference_vectors(shared, chat, LAYER, 4, seed=0, batch_size=4)
    rm = random_difference_vectors(separate, chat, LAYER, 4, seed=0, batch_size=4)
    torch.testing.assert_close(rs, rm, rtol=1e-5, atol=1e-5)  # base side: the adapter is off
    torch.manual_seed(2)
    dirs = torch.cat([torch.randn(2, 32), rs])
    a = delta_ce(shared, LAYER, dirs, ids, batch_size=4, progress=False)
    b = delta_ce(separate, LAYER, dirs, ids, batch_size=4, progress=False)
    assert max(abs(x) for x in a) > 1e-3  # the adapter really changes the model
    assert a == pytest.approx(b, abs=1e-4)
