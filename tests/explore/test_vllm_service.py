"""``difflens serve`` / ``explore`` with the vLLM backend: base, finetuned and steered completions stream
token by token through vLLM engines, the requests that arrive while others run joining the same engine
steps (continuous batching).

vLLM is not installable here (CPU-only CI), so a stand-in engine plays vLLM's part with the run's own
HF models: ``add_request`` / ``step`` / ``abort_request`` as vLLM's ``LLMEngine`` has them, one greedy
token per running request per step (a full forward, no KV cache), and the steering vector applied by
difflens's real worker extension (``SteeringExtension``'s layer hook, ``worker`` mechanism) or per
request from ``extra_args`` (``lens`` mechanism). The numbers checked: every served answer equals the HF
path's greedy answer token for token (unsteered, steered at the threshold, steered at another α),
several requests share steps, a worker-steered engine never mixes two vectors in one step, a cancelled
request is aborted in the engine, and amplification and heat maps stay on the HF pair."""
from __future__ import annotations

import sys
import threading
import time
import types

import pytest
import torch

from difflens.backends import vllm as V
from difflens.explore.service import Limits, ModelService
from explore_runs import tiny_explore  # noqa: F401  (fixture)

PROMPTS = ["tell me a story", "why", "what do you like", "say something"]


class _StepEngine(V.SteeringExtension):
    """A stand-in for ``vllm.LLM`` (and its ``llm_engine``) over an HF causal LM."""

    def __init__(self, hf, kwargs, eos):
        self.kwargs, self.hf, self.eos = kwargs, hf, set(eos)
        self.model_runner = types.SimpleNamespace(get_model=lambda: hf)
        self.llm_engine = self
        self.reqs: dict = {}
        self.steps: list[list[tuple]] = []  # per step: (request id, its steering) of every running request
        self.aborted: list[str] = []
        self.rpcs: list[str] = []

    def collective_rpc(self, method, args=()):
        self.rpcs.append(method)
        return [getattr(self, method)(*args)]

    def add_request(self, rid, prompt, params, lora_request=None):
        assert rid not in self.reqs and params["temperature"] == 0.0
        self.reqs[rid] = (list(prompt["prompt_token_ids"]), params, [])

    def abort_request(self, rids):
        for r in rids:
            self.reqs.pop(r, None)
            self.aborted.append(r)

    def has_unfinished_requests(self):
        return bool(self.reqs)

    def _on_hook(self):
        vec = getattr(self, "_difflens_vec", {})
        return {k: tuple(v.tolist()) for k, v in vec.items()}

    def step(self):
        outs, seen = [], []
        for rid, (ids, params, got) in list(self.reqs.items()):
            lens = (params.get("extra_args") or {}).get("apply")
            seen.append((rid, lens[1].sum().item() if lens else None, str(self._on_hook())))
            if lens is not None:  # vllm-lens: this request's own vector at its layer
                layer, vec = lens
                self.difflens_set_steering(layer, vec.tolist())
            with torch.no_grad():
                logits = self.hf(torch.tensor([ids + got])).logits[0, -1]
            if lens is not None:
                self.difflens_clear_steering()
            t = int(logits.argmax())
            got.append(t)
            finished = t in self.eos or len(got) >= params["max_tokens"]
            comp = types.SimpleNamespace(token_ids=list(got), finish_reason="stop" if t in self.eos else "length")
            outs.append(types.SimpleNamespace(request_id=rid, finished=finished, outputs=[comp]))
            if finished:
                del self.reqs[rid]
        self.steps.append(seen)
        return outs


@pytest.fixture
def fake_vllm(monkeypatch, tiny_explore):
    """A stand-in ``vllm`` module whose engines run the tiny run's own models; returns the engines built."""
    from difflens.files import read_json
    from difflens.models.decoding import eos_ids as _eos_ids

    pair, layout, _ = tiny_explore
    models = read_json(layout.manifest)["models"]
    with pair.side("ft") as m:
        eos = _eos_ids(m, pair.tokenizer)
    engines: dict[str, _StepEngine] = {}

    def llm(**kw):
        side = "ft" if kw["model"] == models["finetuned"]["spec"] else "base"
        with pair.side(side) as hf:
            engines[side] = _StepEngine(hf, kw, eos)
        return engines[side]

    monkeypatch.setitem(sys.modules, "vllm", types.SimpleNamespace(LLM=llm, SamplingParams=lambda **kw: dict(kw)))
    monkeypatch.setattr(V, "lens_available", lambda: False)
    yield engines
    for e in engines.values():  # the hooks sit on the module's shared models: take them off
        for h in getattr(e, "_difflens_hooks", {}).values():
            h.remove()


def _services(tiny_explore, mechanism="worker"):
    """(the HF service, the same run's service on the vLLM backend)."""
    from difflens.files import read_json

    pair, layout, _ = tiny_explore
    models = read_json(layout.manifest)["models"]
    limits = Limits(default_max_tokens=8, max_tokens=64, max_queue=16)
    backend = V.VLLMBackend(models["base"]["spec"], models["finetuned"]["spec"], V.VLLMOptions(steering=mechanism),
                            tokenizer=pair.tokenizer)
    hf = ModelService.from_run(layout, pair=pair, limits=limits)
    on_vllm = ModelService.from_run(layout, pair=pair, limits=limits, vllm=backend)
    return hf, on_vllm


def _ask(service, model, prompt, *, max_tokens=6, **kw):
    spec = service.resolve(model, **kw)
    ids = service.prompt_ids([{"role": "user", "content": prompt}])
    return service.submit(service.chat_job(spec, ids, max_tokens=max_tokens, temperature=0.0, seed=0))


def _answers(jobs):
    out = []
    for job in jobs:
        kind, done = job.wait(timeout=60)
        assert kind == "done", done
        out.append(done)
    return out


@pytest.mark.parametrize("mechanism", ["worker", "lens"])
def test_vllm_answers_equal_the_hf_answers_and_share_steps(tiny_explore, fake_vllm, monkeypatch, mechanism):
    if mechanism == "lens":
        monkeypatch.setattr(V, "lens_available", lambda: True)
        monkeypatch.setattr(V, "lens_extra_args", lambda vec, layer: {"apply": (layer, vec)})
    hf, served = _services(tiny_explore, mechanism)
    asks = [("base", {}), ("finetuned", {}), ("steered-p1", {}), ("steered-p1", {"alpha": 10.0})]
    want = _answers([_ask(hf, m, p, **kw) for (m, kw) in asks for p in PROMPTS[:2]])
    got = _answers([_ask(served, m, p, **kw) for (m, kw) in asks for p in PROMPTS[:2]])
    assert [g["text"] for g in got] == [w["text"] for w in want]
    assert all(g["backend"] == "vllm" and w["backend"] == "hf" for g, w in zip(got, want))
    assert [g["completion_tokens"] for g in got] == [w["completion_tokens"] for w in want]
    assert len({w["text"] for w in want[2:6]}) > 1  # steering changed the finetuned model's answers
    ft = fake_vllm["ft"]
    assert max(len(s) for s in ft.steps) >= 2  # requests stepped together
    if mechanism == "worker":
        # one vector on the hook at a time: every step's requests saw the same hook state
        assert all(len({h for _, _, h in s}) == 1 for s in ft.steps)
        assert "difflens_set_steering" in ft.rpcs and ft.rpcs[-1] == "difflens_clear_steering"
    else:  # per-request vectors: steered and unsteered requests share steps, no RPC
        assert any(len({v for _, v, _ in s}) > 1 for s in ft.steps) and not ft.rpcs


def test_streams_arrive_token_by_token_and_a_cancelled_request_is_aborted(tiny_explore, fake_vllm):
    _, served = _services(tiny_explore)
    spec = served.resolve("finetuned")
    ids = served.prompt_ids([{"role": "user", "content": "why"}])
    job = served.chat_job(spec, ids, max_tokens=40, temperature=0.0, seed=0)
    seen: list = []
    emit = job.emit

    def watch(kind, payload=None):
        seen.append(kind)
        if kind == "token" and seen.count("token") == 3:
            job.cancel()  # the client goes away after three tokens
        emit(kind, payload)

    job.emit = watch  # type: ignore[method-assign]
    served.submit(job)
    kind, done = job.wait(timeout=60)
    assert kind == "done" and done["finish_reason"] == "cancelled" and seen.count("token") == 3
    assert fake_vllm["ft"].aborted and not fake_vllm["ft"].reqs
    t0 = time.time()
    while served.running is not None and time.time() - t0 < 5:
        time.sleep(0.01)
    assert served.running is None
    (after,) = _answers([_ask(served, "finetuned", "why")])  # the service serves on
    assert after["finish_reason"] in ("length", "stop")


def test_amplified_and_heat_maps_stay_on_the_hf_pair(tiny_explore, fake_vllm):
    hf, served = _services(tiny_explore)
    want, got = (_answers([_ask(s, "amplified", "why", beta=2.0)])[0] for s in (hf, served))
    assert got["text"] == want["text"] and got["backend"] == "hf"
    assert "ft" not in fake_vllm  # no engine was asked for anything
    heat = served.submit(served.heatmap_job("the cat sat on the mat")).wait(timeout=60)
    assert heat[0] == "done" and heat[1]["tokens"]


def test_an_engine_failure_answers_every_running_request_and_the_service_goes_on(tiny_explore, fake_vllm):
    _, served = _services(tiny_explore)
    first = _ask(served, "finetuned", "why", max_tokens=4)
    _answers([first])
    ft = fake_vllm["ft"]
    real = ft.step
    ft.step = lambda: (_ for _ in ()).throw(RuntimeError("CUDA error: device-side assert"))  # type: ignore[method-assign]
    failed = [_ask(served, "finetuned", p) for p in PROMPTS[:2]]
    for job in failed:
        kind, msg = job.wait(timeout=60)
        assert kind == "error" and "device-side assert" in msg
    ft.step = real  # type: ignore[method-assign]
    (ok,) = _answers([_ask(served, "steered-p1", "why")])
    assert ok["finish_reason"] in ("length", "stop")
    assert threading.active_count() < 50


def test_start_builds_both_engines_before_serving(tiny_explore, fake_vllm):
    from difflens.files import read_json

    pair, layout, _ = tiny_explore
    models = read_json(layout.manifest)["models"]
    V.VLLMBackend(models["base"]["spec"], models["finetuned"]["spec"], tokenizer=pair.tokenizer).start()
    assert sorted(fake_vllm) == ["base", "ft"]
    assert all(e.kwargs["enforce_eager"] and e.kwargs["enable_prefix_caching"] is False for e in fake_vllm.values())
