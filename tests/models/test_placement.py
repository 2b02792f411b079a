"""Placement: dispatched (per-layer device map) models give identical results to undispatched ones.

All devices are "cpu" here (plus one layer offloaded to "disk"), but accelerate's hooks are forced
on, so every input, hooked layer output and vector goes through the same moves it makes between
GPUs. Placement options and run-config fields fail before any model loads.
"""
from __future__ import annotations

import json

import pytest
import torch

from conftest import save_tiny, save_tiny_adapter
from difflens.adl.collect import CollectConfig, collect, mean_norms
from difflens.adl.interventions import project_out
from difflens.adl.patchscope import patched_next_token_probs, unpatched_tokens
from difflens.adl.steering import encode_prompts_left, generate_rows, steering_hook, steering_vectors
from difflens.errors import ConfigError
from difflens.eval.causal import delta_ce
from difflens.models.pair import load_pair
from difflens.models.placement import input_device, make_placement, parse_device_map, parse_max_memory
from difflens.rundir.layout import RunLayout

FAMILIES = ["llama", "qwen2", "gemma2"]


def per_layer_map(model: torch.nn.Module, disk_layer: int | None = None) -> dict[str, str]:
    """A device map naming every decoder layer (and the embedding, norm, head) on its own."""
    out: dict[str, str] = {}
    for name, child in model.named_children():
        if name != "model":
            out[name] = "cpu"
            continue
        for sub, mod in child.named_children():
            if isinstance(mod, torch.nn.ModuleList):
                for i in range(len(mod)):
                    out[f"model.{sub}.{i}"] = "disk" if i == disk_layer else "cpu"
            else:
                out[f"model.{sub}"] = "cpu"
    return out


def dispatch(model: torch.nn.Module, tmp_path, disk_layer: int | None = None) -> None:
    from accelerate import dispatch_model

    dispatch_model(model, per_layer_map(model, disk_layer), offload_dir=str(tmp_path / f"off{id(model)}"),
                   force_hooks=True)


@pytest.fixture(params=FAMILIES)
def pairs(request, tmp_path):
    """(undispatched pair, the same pair with both models dispatched layer by layer; the finetuned
    model's layer 1 offloaded to disk, so its weights live on the meta device between forwards)."""
    fam = request.param
    a, b = str(save_tiny(tmp_path, fam, 0)), str(save_tiny(tmp_path, fam, 1))
    ref = load_pair(a, b)
    split = load_pair(a, b)
    dispatch(split.base_lm.model, tmp_path)
    dispatch(split.ft_lm.model, tmp_path, disk_layer=1)
    assert getattr(split.ft_lm.model, "_hf_hook", None) is not None
    return ref, split


def test_collection_identical(pairs, tmp_path, corpus_file, monkeypatch):
    # placement must not change a bit; the GEMM library is held fixed (a pair with disk-offloaded weights
    # is not packed, an undispatched one may take oneDNN's packs: models.packed; float rounding apart)
    monkeypatch.setenv("DIFFLENS_PACKED", "mkl")
    ref, split = pairs
    cfg = CollectConfig(datasets=[str(corpus_file)], samples=24, layers=[2], batch_size=8, norm_samples=8)
    a = collect(ref, RunLayout(tmp_path / "r"), cfg, progress=False)[str(corpus_file)][0]
    b = collect(split, RunLayout(tmp_path / "s"), cfg, progress=False)[str(corpus_file)][0]
    assert torch.equal(a.delta, b.delta) and torch.equal(a.base_mean, b.base_mean)
    assert a.eta_ft == b.eta_ft and a.eta_base == b.eta_base
    ids = [[5, 6, 7, 8, 9, 10], [11, 12, 13, 14]]
    assert mean_norms(ref, ids, [1, 3], batch_size=2) == mean_norms(split, ids, [1, 3], batch_size=2)


def test_patchscope_and_lens_identical(pairs):
    ref, split = pairs
    torch.manual_seed(0)
    v = torch.randn(ref.arch.hidden_size)
    for side in ("ft", "base"):
        p = patched_next_token_probs(ref, 2, v, [0.5, 2.0, 40.0], 3.0, side=side)
        q = patched_next_token_probs(split, 2, v, [0.5, 2.0, 40.0], 3.0, side=side)
        assert torch.equal(p, q)
    assert unpatched_tokens(ref) == unpatched_tokens(split)
    assert torch.equal(ref.ft_arch.unembed(v[None]), split.ft_arch.unembed(v[None]))


def test_steered_generation_identical(pairs):
    ref, split = pairs
    torch.manual_seed(1)
    direction = torch.randn(ref.arch.hidden_size)
    outs = []
    for pair in (ref, split):
        prompts = ["tell me a story", "give me some fun ideas ?"]
        ids, mask = encode_prompts_left(pair, prompts)
        add = steering_vectors(direction, [4.0, 8.0], 2.0)
        with pair.ft() as model, steering_hook(pair, 2, add, mask):
            greedy = model.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=6,
                                    pad_token_id=pair.tokenizer.pad_token_id)
        sampled = generate_rows(pair, prompts, [3.0, 6.0], layer=2, direction=direction, eta=2.0, temperature=1.2,
                                max_new_tokens=6, seed=3)
        outs.append((greedy.cpu().tolist(), sampled))
    assert outs[0] == outs[1]


def test_causal_effect_and_caft_edit_identical(pairs):
    ref, split = pairs
    torch.manual_seed(2)
    dirs = torch.randn(3, ref.arch.hidden_size)
    ids = [[5, 6, 7, 8, 9, 10, 11], [12, 13, 14, 15], [20, 21, 22, 23, 24]]
    assert delta_ce(ref, 2, dirs, ids, batch_size=2) == delta_ce(split, 2, dirs, ids, batch_size=2)
    q, _ = torch.linalg.qr(torch.randn(ref.arch.hidden_size, 2))
    x = torch.tensor([[5, 6, 7, 8, 9]])
    logits = []
    for pair in (ref, split):
        with pair.ft() as model, pair.ft_arch.edit_layer(1, project_out(q)), torch.no_grad():
            logits.append(model(input_ids=x).logits)
    assert torch.equal(logits[0], logits[1])


def test_input_device_is_the_embeddings(tmp_path):
    """With the embedding offloaded (meta weights) the input device is accelerate's execution device."""
    from accelerate import dispatch_model

    pair = load_pair(str(save_tiny(tmp_path, "llama", 0)), str(save_tiny(tmp_path, "llama", 1)))
    dm = per_layer_map(pair.ft_lm.model)
    dm["model.embed_tokens"] = "disk"
    dispatch_model(pair.ft_lm.model, dm, offload_dir=str(tmp_path / "off"), force_hooks=True)
    assert pair.ft_lm.model.model.embed_tokens.weight.device.type == "meta"
    assert input_device(pair.ft_lm.model) == torch.device("cpu")
    assert pair.input_device("ft") == torch.device("cpu") and pair.device == torch.device("cpu")


def test_separate_base_and_ft_placement(tmp_path, corpus_file, monkeypatch):
    """--base-device cpu --ft-device FILE.json: the finetuned model loads through transformers'
    device_map path with a per-layer map; results equal the plain pair's."""
    import transformers

    a, b = str(save_tiny(tmp_path, "qwen2", 0)), str(save_tiny(tmp_path, "qwen2", 1))
    ref = load_pair(a, b)
    dm_file = tmp_path / "ft_map.json"
    dm_file.write_text(json.dumps(per_layer_map(ref.ft_lm.model)))
    seen: dict[str, object] = {}
    real = transformers.AutoModelForCausalLM.from_pretrained

    def spy(path, **kw):
        seen[str(path)] = kw.get("device_map")
        return real(path, **kw)

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", spy)
    split = load_pair(a, b, base_device="cpu", ft_device=str(dm_file))
    assert seen == {a: None, b: per_layer_map(ref.ft_lm.model)}
    cfg = CollectConfig(datasets=[str(corpus_file)], samples=16, layers=[1], batch_size=8, norm_samples=8)
    x = collect(ref, RunLayout(tmp_path / "r"), cfg, progress=False)[str(corpus_file)][0]
    y = collect(split, RunLayout(tmp_path / "s"), cfg, progress=False)[str(corpus_file)][0]
    assert torch.equal(x.delta, y.delta)
    # one map for both models through load_pair(device_map=...), the CLI's --device-map FILE.json
    both = load_pair(a, b, device_map=str(dm_file))
    z = collect(both, RunLayout(tmp_path / "t"), cfg, progress=False)[str(corpus_file)][0]
    assert torch.equal(x.delta, z.delta)


# -- parsing and validation -------------------------------------------------------------------------


def test_max_memory_parsing():
    assert parse_max_memory("0=20GiB,1=20GiB,cpu=60GiB") == {0: "20GiB", 1: "20GiB", "cpu": "60GiB"}
    assert parse_max_memory("cuda:0=512mb, cpu = 1024") == {0: "512MB", "cpu": "1024"}
    assert parse_max_memory(None) is None
    for bad, msg in [("0:20GiB", "not DEVICE=SIZE"), ("gpu0=20GiB", "unknown device 'gpu0'"),
                     ("0=lots", "'lots' for device 0 is not a size"), ("0=1GiB,0=2GiB", "given twice"),
                     (",", "empty"), ("0=-3GB", "not a size")]:
        with pytest.raises(ConfigError, match=msg):
            parse_max_memory(bad)


def test_device_map_validation(tmp_path):
    assert parse_device_map("auto") == "auto" and parse_device_map("balanced") == "balanced"
    with pytest.raises(ConfigError, match="does not exist"):
        parse_device_map(str(tmp_path / "missing.json"))
    with pytest.raises(ConfigError, match="neither one of auto"):
        parse_device_map("everywhere")
    bad = tmp_path / "bad.json"
    for text, msg in [("[1, 2]", "non-empty JSON object"), ("{", "not valid JSON"),
                      ('{"model.layers.0": "gpu"}', "'gpu' is not a device"), ('{"lm_head": -1}', "must be ≥ 0")]:
        bad.write_text(text)
        with pytest.raises(ConfigError, match=msg):
            parse_device_map(str(bad))
    good = tmp_path / "good.json"
    good.write_text('{"model.embed_tokens": 0, "model.layers.0": "1", "lm_head": "cpu"}')
    assert parse_device_map(str(good)) == {"model.embed_tokens": 0, "model.layers.0": 1, "lm_head": "cpu"}
    with pytest.raises(ConfigError, match="--max-memory caps"):
        make_placement(max_memory="0=1GiB")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="0 CUDA device"):
            make_placement(ft_device="cuda:1")
    p = make_placement(device_map="auto", max_memory="cpu=1GiB", ft_device="cpu")
    assert p.split and p.base.device_map == "auto" and p.base.max_memory == {"cpu": "1GiB"}
    assert p.ft.device == "cpu" and p.ft.device_map is None


def test_shared_adapter_refuses_split_placement(tmp_path):
    base_dir = save_tiny(tmp_path, "llama", 0)
    peft_model, adapter = save_tiny_adapter(tmp_path, base_dir, r=2, target_modules=["q_proj"])
    dm = tmp_path / "m.json"
    dm.write_text(json.dumps(per_layer_map(peft_model.get_base_model())))
    with pytest.raises(ConfigError, match="share one set of weights"):
        load_pair(str(base_dir), str(adapter), ft_device=str(dm))


def test_cli_placement_errors_before_loading(tmp_path):
    from typer.testing import CliRunner

    from difflens.cli.main import app

    runner = CliRunner()

    def invoke(args):
        res = runner.invoke(app, args)
        return res.exit_code, " ".join(res.output.split())  # the console wraps long lines

    common = ["collect", "--base", "does-not-exist-base", "--finetuned", "nor-this", "--out", str(tmp_path / "r")]
    code, out = invoke([*common, "--device-map", str(tmp_path / "missing.json")])
    assert code == 2 and "does not exist" in out and "missing.json" in out
    code, out = invoke([*common, "--device-map", "auto", "--max-memory", "0=twenty"])
    assert code == 2 and "is not a size" in out
    code, out = invoke([*common, "--dtype", "float8"])
    assert code == 2 and "unknown dtype 'float8'" in out
    code, out = invoke(["lens", str(tmp_path / "r"), "--max-memory", "cpu=1GiB"])
    assert code == 2 and "--max-memory caps" in out


def test_run_config_placement_fields(tmp_path):
    from conftest import write_run_config
    from difflens.run.config import load_config

    ok = load_config(write_run_config(tmp_path, out=str(tmp_path / "r"), finetuned="x", device_map="balanced",
                                      max_memory="cpu=2GiB", ft_device="cpu"))
    assert ok.dtype == "auto" and ok.placement().base.max_memory == {"cpu": "2GiB"}
    with pytest.raises(ConfigError, match="max_memory.*not a size|not a size"):
        load_config(write_run_config(tmp_path, out=str(tmp_path / "r"), finetuned="x", device_map="auto",
                                     max_memory="0=big"))
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(write_run_config(tmp_path, out=str(tmp_path / "r"), finetuned="x",
                                     device_map=str(tmp_path / "nope.json")))
    with pytest.raises(ConfigError, match="dtype"):
        load_config(write_run_config(tmp_path, out=str(tmp_path / "r"), finetuned="x", dtype="float8"))
