"""difflens.models.decode_step: decode steps without transformers' forward, against forward itself
(teacher-forced logits, greedy loops steered and not), its refusals, and its fused copies' lifetime."""
from __future__ import annotations

import pytest
import torch

import difflens.models.decode_step as S
import difflens.models.decoding as D
from conftest import tiny_model, tiny_tokenizer

STEPPED = ["llama", "qwen2", "qwen3"]


def _batch():
    ids = torch.tensor([[1, 1, 5, 6, 7, 8], [9, 10, 11, 12, 13, 14], [1, 1, 1, 1, 15, 16]])
    return ids, (ids != 1).long()


def _teacher_forced(model, ids, mask, feed, step=None):
    """Logits of each of ``feed``'s steps after a prefill of ``ids``: by forward, or by ``step``."""
    cache = D.growing_cache(model.config, ids.shape[1] + feed.shape[1] + 1)
    outs = []
    with torch.no_grad(), D.decode_attention_on(model):
        model(input_ids=ids, attention_mask=mask, use_cache=True, cache=cache)
        att, pos = mask, (mask.cumsum(-1) - 1).clamp(min=0)[:, -1:]
        for t in range(feed.shape[1]):
            att = torch.cat([att, att.new_ones(att.shape[0], 1)], -1)
            pos = pos + 1
            if step is None:
                logits = model(input_ids=feed[:, t:t + 1], attention_mask=att, position_ids=pos, use_cache=True,
                               cache=cache).logits[:, -1]
            else:
                logits = step(feed[:, t:t + 1], S.additive_mask(att), pos, cache, attend=D.step_attention)
            outs.append(logits.clone())
    return torch.stack(outs, 1)


@pytest.mark.parametrize("family", STEPPED)
@pytest.mark.parametrize("fuse", [True, False])
def test_step_logits_equal_forwards(family, fuse):
    """Teacher-forced through 6 steps of a left-padded batch (Qwen2: biased q/k/v; Qwen3: normed
    queries and keys): the step's logits are forward's to float rounding."""
    model = tiny_model(family, seed=4)
    ids, mask = _batch()
    feed = torch.randint(5, 200, (3, 6), generator=torch.Generator().manual_seed(1))
    want = _teacher_forced(model, ids, mask, feed)
    step = S.DecodeStep(model, fuse)
    assert (step.layers[0].qkv is not None) == fuse
    with step.packed(False):
        got = _teacher_forced(model, ids, mask, feed, step)
    assert want.abs().max() > 0.1
    torch.testing.assert_close(got, want, rtol=1e-5, atol=2e-5)


def test_the_step_attends_on_the_kernel_where_it_serves(monkeypatch):
    """64-wide heads (the compiled kernel's, where this CPU has it): the same logits through the step."""
    import transformers as T

    torch.manual_seed(0)
    cfg = T.LlamaConfig(vocab_size=512, hidden_size=128, intermediate_size=128, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, head_dim=64, max_position_embeddings=256,
                        pad_token_id=1, bos_token_id=2, eos_token_id=3, attn_implementation="sdpa")
    model = T.AutoModelForCausalLM.from_config(cfg).eval()
    ids, mask = _batch()
    feed = torch.randint(5, 200, (3, 5), generator=torch.Generator().manual_seed(2))
    import difflens.models.cpu_kernels as K

    want = _teacher_forced(model, ids, mask, feed)
    real, calls = K.decode_attention_kernel(), []
    if real is not None:  # count the kernel's calls (forward's steps above used it too, uncounted)
        monkeypatch.setattr(K, "_KERNEL", [lambda *a: calls.append(a[1].shape[2]) or real(*a)])
    with S.DecodeStep(model, True).packed(None) as step:
        got = _teacher_forced(model, ids, mask, feed, step)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=2e-5)
    if real is not None:  # 2 layers × 5 steps, keys 7..11 long (6 prompt positions, then one more a step)
        assert sorted(set(calls)) == [7, 8, 9, 10, 11] and len(calls) == 10


@pytest.mark.parametrize("family", STEPPED)
def test_greedy_loops_agree_steered_and_not(family, monkeypatch):
    """sample_rows with the step and without (DIFFLENS_DECODE_STEP=0): the same greedy tokens, also with
    a forward hook adding a vector to a middle layer's output (the steering hook's kind), which really
    changes them; the step really ran."""
    tok = tiny_tokenizer()
    model = tiny_model(family, seed=6)
    ids, mask = _batch()
    calls = []
    real = S.DecodeStep.__call__

    def counted(self, *a, **k):
        calls.append(a[0].shape[0])
        return real(self, *a, **k)

    monkeypatch.setattr(S.DecodeStep, "__call__", counted)

    def run(hook):
        handle = model.model.layers[1].register_forward_hook(lambda m, a, out: out + 3.0 * torch.ones(out.shape[-1])) \
            if hook else None
        try:
            return D.sample_rows(model, ids, mask, tokenizer=tok, temperature=0.0, max_new_tokens=8, seed=0)
        finally:
            if handle is not None:
                handle.remove()

    for hook in (False, True):
        monkeypatch.setenv("DIFFLENS_DECODE_STEP", "0")
        calls.clear()
        want = run(hook)
        assert not calls
        monkeypatch.setenv("DIFFLENS_DECODE_STEP", "1")
        got = run(hook)
        assert got == want and len(calls) == 7  # every decode step after the prefill
    assert run(True) != run(False)


def test_the_step_refuses_what_it_does_not_run(monkeypatch):
    """Other architectures, a model not float32, pre-hooks, keyword hooks, hooks below a layer, a
    LoRA-wrapped projection, a cache without growing layers, and the switch: no step (forward runs)."""
    def cache(model):
        return D.growing_cache(model.config, 16)

    for family in ("gemma2", "gemma3_text", "mistral", "gpt2"):
        model = tiny_model(family)
        assert S.decode_step(model, cache(model)) is None, family
    model = tiny_model("llama")
    assert S.decode_step(model, cache(model)) is not None
    from transformers import DynamicCache
    assert S.decode_step(model, DynamicCache(config=model.config)) is None

    def refused(register):
        handle = register()
        try:
            return S.decode_step(model, cache(model)) is None
        finally:
            handle.remove()

    layer = model.model.layers[1]
    assert refused(lambda: layer.register_forward_pre_hook(lambda m, a: None))
    assert refused(lambda: layer.register_forward_hook(lambda m, a, k, o: None, with_kwargs=True))
    assert refused(lambda: layer.mlp.register_forward_hook(lambda m, a, o: None))
    assert refused(lambda: model.model.norm.register_forward_hook(lambda m, a, o: None))
    assert not refused(lambda: layer.register_forward_hook(lambda m, a, o: None))  # the steering hook's kind
    # a projection's forward replaced by anything but PackedLinears (the fused product would bypass it)
    proj = layer.self_attn.k_proj
    proj.forward = lambda x: torch.nn.functional.linear(x, proj.weight) * 2
    assert S.decode_step(model, cache(model)) is None
    del proj.forward
    from difflens.models.packed import PackedLinears, available, is_packed_forward
    backend = next((b for b in ("onednn", "mkl") if available(b)), None)
    if backend is not None:  # PackedLinears' own replacement is the same product: the step serves
        with PackedLinears(model, backend=backend) as packer:
            assert packer.active and "forward" in proj.__dict__ and is_packed_forward(proj)
            assert S.decode_step(model, cache(model)) is not None
        assert not is_packed_forward(proj)
    monkeypatch.setenv("DIFFLENS_DECODE_STEP", "0")
    assert S.decode_step(model, cache(model)) is None
    monkeypatch.delenv("DIFFLENS_DECODE_STEP")
    half = tiny_model("llama").to(torch.bfloat16)
    assert S.decode_step(half, cache(half)) is None

    from peft import LoraConfig, get_peft_model
    lora = get_peft_model(tiny_model("llama"), LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    assert S.decode_step(lora, cache(lora.get_base_model())) is None
    assert S.decode_step(lora.get_base_model(), cache(lora.get_base_model())) is None  # wrapped projections


def test_fused_copies_are_kept_for_a_stage_and_remade_when_a_weight_changes():
    """Inside a stage (keep_packs) the step and its fused copies are made once per model and freed with
    the stage; outside, each call makes its own. An in-place weight update makes new copies, and the
    step's logits follow the new weights."""
    from difflens.models.packed import keep_packs, stage_store

    model = tiny_model("llama", seed=2)
    c = D.growing_cache(model.config, 16)
    assert S.decode_step(model, c) is not S.decode_step(model, c)
    with keep_packs():
        first = S.decode_step(model, c)
        assert first is not None and first.fused and S.decode_step(model, c) is first
        with keep_packs():  # a nested block keeps the outer one's
            assert S.decode_step(model, c) is first
        assert model in stage_store()["decode_steps"]
    assert stage_store() is None
    with keep_packs():
        assert S.decode_step(model, c) is not first
        _check_remade(model, c, S.decode_step(model, c))


def _check_remade(model, c, first):
    ids, mask = _batch()
    feed = torch.randint(5, 200, (3, 3), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        model.model.layers[0].self_attn.k_proj.weight.mul_(1.5)
    second = S.decode_step(model, c)
    assert second is not first
    heads, kv_heads, head_dim = S.attention_heads(model.config)
    torch.testing.assert_close(second.layers[0].qkv.weight[heads * head_dim:(heads + kv_heads) * head_dim],
                               model.model.layers[0].self_attn.k_proj.weight, rtol=0, atol=0)
    with second.packed(False):
        got = _teacher_forced(model, ids, mask, feed, second)
    torch.testing.assert_close(got, _teacher_forced(model, ids, mask, feed), rtol=1e-5, atol=2e-5)


def test_fused_copies_are_skipped_when_memory_is_short(monkeypatch):
    """Copies that would not fit the free memory's share: the step runs the model's own projections."""
    monkeypatch.setattr(S, "_free_bytes", lambda: 1000)
    model = tiny_model("llama", seed=2)
    step = S.decode_step(model, D.growing_cache(model.config, 16))
    assert step is not None and not step.fused and step.layers[0].qkv is None


@pytest.mark.integration
def test_the_embedded_model_takes_the_step():
    """SmolLM2 after a forward that recorded hidden states (which leaves inert output-capturing hooks on
    its modules): the step
    serves it, and its logits equal forward's teacher-forced (on the kernel where this CPU has it)."""
    from difflens.models.sources import load_model

    lm = load_model("smollm2-135m-instruct")
    model = lm.model
    ids, mask = _batch()
    feed = torch.randint(5, 2000, (3, 3), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():  # a forward asked for hidden states installs the capturing hooks (the stages ask)
        model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    assert any(m._forward_hooks for m in model.modules())
    want = _teacher_forced(model, ids, mask, feed)
    step = S.decode_step(model, D.growing_cache(model.config, 16))
    assert step is not None
    with step.packed(False):  # the products as forward computes them (packs round otherwise: tested apart)
        got = _teacher_forced(model, ids, mask, feed, step)
    assert (got.argmax(-1) == want.argmax(-1)).all()
    # 9e-4 here on logits up to 35, fused or not (the kernel's and the rotary's rounding through 30
    # layers); forward itself differs by 8e-3 between packed and unpacked weights
    torch.testing.assert_close(got, want, rtol=0, atol=2e-3)


def test_a_cached_step_does_not_keep_its_model_alive():
    """A stage keeps the steps by model, weakly: a model dropped inside the stage is freed with its copies."""
    import gc
    import weakref

    from difflens.models.packed import keep_packs, stage_store

    with keep_packs():
        model = tiny_model("llama", seed=7)
        assert S.decode_step(model, D.growing_cache(model.config, 16)) is not None
        assert len(stage_store()["decode_steps"]) == 1
        gone = weakref.ref(model)
        del model
        gc.collect()
        assert gone() is None and len(stage_store()["decode_steps"]) == 0
