"""The compiled CPU decode-attention kernel (difflens.models.cpu_kernels) against the matmul path it
replaces, in isolation and inside the decode loop; and the fallbacks when it cannot run."""
from __future__ import annotations

import os

import pytest
import torch

import difflens.models.cpu_kernels as K
import difflens.models.decoding as D

needs_kernel = pytest.mark.skipif(not K.cpu_supports(), reason="the kernel needs x86-64 with AVX-512F and a C++ "
                                  "compiler (the matmul path serves elsewhere; tests/models/test_decoding.py covers it)")


def _matmul_path(q, k, v, mask, monkeypatch):
    monkeypatch.setattr(D, "_KERNELS", [])
    out, _ = D.decode_attention(torch.nn.Module(), q, k, v, mask)
    return out


def _kernel_path(q, k, v, mask, monkeypatch, kernel):
    monkeypatch.setattr(D, "_KERNELS", [kernel])
    out, _ = D.decode_attention(torch.nn.Module(), q, k, v, mask)
    return out


@needs_kernel
@pytest.mark.parametrize("dim,group,kv_heads", [(64, 3, 3), (64, 1, 2), (128, 8, 1), (128, 2, 2)])
def test_the_kernel_equals_the_matmuls(monkeypatch, dim, group, kv_heads):
    """Keys and values as a growing cache hands them (views of a longer buffer), a padded batch's
    boolean mask, a float mask broadcast over the batch, and no mask: the same attention up to float
    rounding (outputs are convex mixtures of values of size ~1)."""
    kernel = K.decode_attention_kernel()
    assert kernel is not None
    g = torch.Generator().manual_seed(dim + group)
    b, length, room = 5, 37, 64
    kbuf = torch.randn(b, kv_heads, room, dim, generator=g)
    vbuf = torch.randn(b, kv_heads, room, dim, generator=g)
    key, value = kbuf[:, :, :length], vbuf[:, :, :length]
    q = torch.randn(b, kv_heads * group, 1, dim, generator=g) * 2
    pad = torch.ones(b, 1, 1, length + 3, dtype=torch.bool)  # a longer mask: the step's row is cut to the keys
    pad[1, ..., :9] = False
    pad[3, ..., :30] = False
    additive = torch.zeros(1, 1, 1, length)
    additive[..., :4] = float("-inf")
    additive[..., 10] = -2.5
    for mask in (pad, additive, None):
        want = _matmul_path(q, key, value, mask, monkeypatch)
        got = _kernel_path(q, key, value, mask, monkeypatch, kernel)
        assert got.shape == want.shape == (b, 1, kv_heads * group, dim)
        assert torch.allclose(got, want, atol=2e-6, rtol=1e-5), (got - want).abs().max()
    # a masked key has no weight: its value can be anything
    vbuf[3, :, :30] = 1e6
    assert torch.allclose(_kernel_path(q, key, value, pad, monkeypatch, kernel),
                          _matmul_path(q, key, value, pad, monkeypatch), atol=2e-6, rtol=1e-5)


@needs_kernel
def test_the_decode_loop_runs_on_the_kernel(monkeypatch):
    """A Llama with 64-wide heads, greedy: the same tokens with the kernel as with the matmuls, and
    the kernel really ran (once per layer and decode step); 32-wide heads stay on the matmuls."""
    import transformers as T

    from conftest import tiny_tokenizer

    def llama(head_dim):
        torch.manual_seed(0)
        cfg = T.LlamaConfig(vocab_size=512, hidden_size=128, intermediate_size=128, num_hidden_layers=2,
                            num_attention_heads=128 // head_dim * 2, num_key_value_heads=2, head_dim=head_dim,
                            max_position_embeddings=256, pad_token_id=1, bos_token_id=2, eos_token_id=3,
                            attn_implementation="sdpa")
        return T.AutoModelForCausalLM.from_config(cfg).eval()

    tok = tiny_tokenizer(bos=False)
    ids = torch.tensor([[1, 1, 5, 6, 7], [8, 9, 10, 11, 12], [1, 1, 1, 13, 14]])
    mask = (ids != 1).long()
    real = K.decode_attention_kernel()
    calls = []

    def counted(*a):
        calls.append(a[1].shape[2])
        return real(*a)

    for head_dim, used in ((64, True), (32, False)):
        model = llama(head_dim)
        calls.clear()
        monkeypatch.setattr(K, "_KERNEL", [counted])
        with_kernel = D.sample_rows(model, ids, mask, tokenizer=tok, temperature=0.0, max_new_tokens=6, seed=0)
        n = len(calls)
        monkeypatch.setattr(K, "_KERNEL", [None])
        without = D.sample_rows(model, ids, mask, tokenizer=tok, temperature=0.0, max_new_tokens=6, seed=0)
        assert with_kernel == without
        if used:  # 2 layers × 5 decode steps (the prefill attends through sdpa), keys 6..10 long
            assert n == 10 and sorted(set(calls)) == [6, 7, 8, 9, 10]
        else:
            assert n == 0


def test_without_the_kernel_attention_uses_the_matmuls(monkeypatch, capsys):
    """DIFFLENS_CPU_KERNELS=0, a CPU without AVX-512 and a failed build each give None (a failed build
    says so once); the decode loop then attends through the matmuls."""
    monkeypatch.setattr(K, "_KERNEL", [])
    monkeypatch.setenv("DIFFLENS_CPU_KERNELS", "0")
    assert K.decode_attention_kernel() is None

    monkeypatch.setattr(K, "_KERNEL", [])
    monkeypatch.delenv("DIFFLENS_CPU_KERNELS")
    monkeypatch.setattr(K, "cpu_supports", lambda: False)
    assert K.decode_attention_kernel() is None

    import torch.utils.cpp_extension as X

    def broken(*a, **k):
        raise RuntimeError("Error building extension 'difflens_decode_attention'")

    monkeypatch.setattr(K, "_KERNEL", [])
    monkeypatch.setattr(K, "cpu_supports", lambda: True)
    monkeypatch.setattr(X, "load_inline", broken)
    assert K.decode_attention_kernel() is None
    assert K.decode_attention_kernel() is None  # tried once per process
    err = capsys.readouterr().err
    assert err.count("kernel is unavailable (RuntimeError: Error building extension") == 1
    assert "attention uses matmuls" in err
    assert not K.kernel_fits(32, 3) and not K.kernel_fits(64, 9) and K.kernel_fits(128, 8)


def test_the_pip_ninja_builds_when_none_is_on_the_path(monkeypatch):
    """`.venv/bin/difflens` runs without the venv's bin directory on PATH: the ninja that pip installed
    (a dependency) is put on it for the build; a ninja already on PATH is left alone."""
    import shutil

    import ninja

    monkeypatch.setenv("PATH", "/usr/local/bin")
    monkeypatch.setattr(shutil, "which", lambda name, *a, **k: None)
    K._ninja_on_path()
    assert os.environ["PATH"].split(":")[0] == str(ninja.BIN_DIR)
    monkeypatch.setenv("PATH", "/usr/local/bin")
    monkeypatch.setattr(shutil, "which", lambda name, *a, **k: "/usr/bin/ninja")
    K._ninja_on_path()
    assert os.environ["PATH"] == "/usr/local/bin"
