"""Precision: ``auto`` resolves per device and size; δ̄ stays within tolerance of float32 in every
precision (float64 running sums whatever the compute dtype); a float32 residual stream reaches
the hooks with half-precision weights; an overflow is refused, not averaged."""
from __future__ import annotations

import pytest
import json

import torch

from conftest import save_tiny, tiny_config, tiny_model
from difflens.adl.collect import CollectConfig, collect
from difflens.errors import ConfigError
from difflens.models.pair import load_pair
from difflens.models.precision import count_parameters, resolve_precision, weight_dtype
from difflens.rundir.layout import RunLayout, read_json

GiB = 2**30


def test_auto_resolution():
    r = resolve_precision
    assert r("auto", device_type="cpu", n_params=70_000_000_000, accelerator_bytes=None) == "float32"
    assert r("auto", device_type="cuda", n_params=None, accelerator_bytes=80 * GiB) == "float32"
    # 2 × 4 B × 1B = 8 GB ≤ half of 80 GiB: float32
    assert r("auto", device_type="cuda", n_params=1_000_000_000, accelerator_bytes=80 * GiB) == "float32"
    # 2 × 4 B × 8B = 64 GB > 40 GiB: half-precision weights, float32 residual
    assert r("auto", device_type="cuda", n_params=8_000_000_000, accelerator_bytes=80 * GiB) == "fp16-fp32res"
    assert r("auto", device_type="cuda", n_params=8_000_000_000, accelerator_bytes=80 * GiB,
             model_type="gemma2") == "bf16-fp32res"
    assert r("bfloat16", device_type="cpu", n_params=1, accelerator_bytes=None) == "bfloat16"
    with pytest.raises(ConfigError, match="unknown dtype 'float8'"):
        r("float8", device_type="cpu", n_params=1)
    assert weight_dtype("bf16-fp32res") == torch.bfloat16 and weight_dtype("fp16-fp32res") == torch.float16


@pytest.mark.parametrize("family", ["llama", "qwen2", "gemma2"])
def test_parameter_count_from_config(family):
    real = sum(p.numel() for p in tiny_model(family).parameters())
    assert count_parameters(tiny_config(family)) == pytest.approx(real, rel=0.05)


def _collect(pair, tmp_path, corpus_file, name):
    cfg = CollectConfig(datasets=[str(corpus_file)], samples=40, layers=[2], batch_size=8, norm_samples=8)
    c = collect(pair, RunLayout(tmp_path / name), cfg, progress=False)[str(corpus_file)][0]
    return c, read_json(RunLayout(tmp_path / name).collect_stats(str(corpus_file)))["fingerprint"]


def test_accumulation_is_float64_and_fp32_residual_tracks_float32(tmp_path, corpus_file):
    a, b = str(save_tiny(tmp_path, "llama", 0)), str(save_tiny(tmp_path, "llama", 1))
    auto = load_pair(a, b, dtype="auto")
    assert auto.precision == "float32"  # auto on a CPU
    ref, fp_ref = _collect(auto, tmp_path, corpus_file, "fp32")
    rel = {}
    for name in ("bfloat16", "bf16-fp32res", "float16", "fp16-fp32res"):
        pair = load_pair(a, b, dtype=name)
        assert pair.precision == name and next(pair.ft_lm.model.parameters()).dtype == weight_dtype(name)
        c, fp = _collect(pair, tmp_path, corpus_file, name)
        assert fp != fp_ref  # a reduced-precision δ̄ never reuses a float32 collection (or vice versa)
        assert c.delta.dtype == torch.float32 and torch.isfinite(c.delta).all()
        rel[name] = float((c.delta - ref.delta).norm() / ref.delta.norm())
        if name.endswith("fp32res"):  # the hooked residual stream is float32 even with half weights
            x = torch.tensor([[5, 6, 7, 8]])
            h = pair.arch.capture(pair.base_lm.model, x, [2])[2]
            assert h.dtype == torch.float32
    # measured: float16 0.06%, fp16-fp32res 0.03%, bf16-fp32res 0.4%, bfloat16 0.5% (tiny random model)
    assert rel["float16"] < 0.005 and rel["fp16-fp32res"] < 0.005, rel
    assert rel["bf16-fp32res"] < 0.02 and rel["bfloat16"] < 0.03, rel


def test_overflow_is_refused(tmp_path, corpus_file):
    from difflens.errors import DataError

    a, b = str(save_tiny(tmp_path, "llama", 0)), str(save_tiny(tmp_path, "llama", 1))
    pair = load_pair(a, b, dtype="float16")
    with torch.no_grad():
        pair.ft_arch.layers[1].mlp.down_proj.weight.mul_(1e6)  # activations beyond float16's range
    with pytest.raises(DataError, match="non-finite activations.*float16.*bf16-fp32res"):
        _collect(pair, tmp_path, corpus_file, "overflow")


def test_pair_precision_is_known_without_loading_the_pair(tiny_run, tmp_path, monkeypatch):
    """What `evaluate` puts in the fingerprints of the parts that run the pair, before loading it:
    the precision load_pair would resolve (auto: float32 on a CPU), or none for a run without a
    manifest."""
    import difflens.models.pair as P
    from difflens.rundir.layout import RunLayout

    pair, layout, _ = tiny_run
    monkeypatch.setattr(P, "load_model", lambda *a, **k: (_ for _ in ()).throw(AssertionError("loaded")))
    assert P.run_pair_precision(layout) == P.run_pair_precision(layout, dtype="auto") == pair.precision == "float32"
    assert P.run_pair_precision(layout, dtype="bf16-fp32res", device="cpu") == "bf16-fp32res"
    spec = json.loads(layout.manifest.read_text())["models"]["base"]["spec"]
    assert P.pair_precision(spec, dtype=torch.float16) == "float16"
    assert P.run_pair_precision(RunLayout(tmp_path / "empty")) is None
