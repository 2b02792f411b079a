"""`difflens serve`: an OpenAI-compatible endpoint over a run's models (tiny real pair, served by uvicorn on
a loopback port): model list, completions and streaming through the openai SDK, the bearer token,
steering really applied, bad requests; and the agent loop end to end with a served model as the agent."""
from __future__ import annotations

import openai
import pytest
import torch

from difflens.rundir import artifacts as A
from difflens.serve import Limits, ModelService, ThreadedServer, serve_app


@pytest.fixture
def served(tiny_run):
    pair, layout, c = tiny_run
    with torch.no_grad():  # a random-init model is near-uniform; sharpen it so steering shows in samples
        pair.ft_lm.model.lm_head.weight.mul_(50)
    th = A.SteeringThreshold(position=1, alpha=40.0, per_prompt=[40.0], steps=[], generations_used=0, grader_calls=0)
    A.save(A.SteeringResult(dataset=c.dataset, layer=2, eta_ft=c.eta_ft, grader="t", thresholds=[th],
                            prompts=["p"], samples_per_prompt=1, temperature=1.0), layout.steering(c.dataset, 2))
    models = ModelService.from_run(layout, pair=pair, limits=Limits(default_max_tokens=6))
    with ThreadedServer(serve_app(models, token="s3cret")) as srv:
        yield models, f"{srv.url}/v1", layout


def _client(url, key="s3cret"):
    return openai.OpenAI(base_url=url, api_key=key, max_retries=0, timeout=30)


def test_models_completions_and_streaming(served, monkeypatch):
    for v in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(v, raising=False)
    models, url, _ = served
    cl = _client(url)
    assert [m.id for m in cl.models.list().data] == ["base", "finetuned", "steered-p1", "amplified"]
    msgs = [{"role": "user", "content": "tell me a story"}]
    r = cl.chat.completions.create(model="finetuned", messages=msgs, max_tokens=5, temperature=0)
    assert isinstance(r.choices[0].message.content, str) and r.usage.completion_tokens <= 5
    # greedy decoding is deterministic; steering changes the output, the base model differs from the finetune
    again = cl.chat.completions.create(model="finetuned", messages=msgs, max_tokens=5, temperature=0)
    steered = cl.chat.completions.create(model="steered-p1", messages=msgs, max_tokens=5, temperature=0)
    assert again.choices[0].message.content == r.choices[0].message.content
    assert steered.choices[0].message.content != r.choices[0].message.content
    chunks = list(cl.chat.completions.create(model="finetuned", messages=msgs, max_tokens=5, temperature=0,
                                             stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == r.choices[0].message.content
    # OpenAI's finish reasons: "length" when max_tokens ended it, "stop" at the end-of-sequence token
    assert chunks[-1].choices[0].finish_reason == ("length" if r.usage.completion_tokens == 5 else "stop")


def test_token_and_bad_requests(served, monkeypatch):
    for v in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(v, raising=False)
    _, url, _ = served
    with pytest.raises(openai.AuthenticationError):
        _client(url, key="wrong").models.list()
    with pytest.raises(openai.NotFoundError, match="unknown model"):
        _client(url).chat.completions.create(model="gpt-9", messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.BadRequestError, match="messages"):
        _client(url).chat.completions.create(model="base", messages=[])


def test_the_agent_loop_terminates_with_a_served_model_as_agent(served, monkeypatch, tmp_path):
    """Whatever a tiny random model says, the episode ends cleanly and is recorded and graded."""
    from difflens.agent.loop import run_episode
    from difflens.agent.providers import EndpointAgent
    from difflens.agent.run import run_setting
    from difflens.llm import LLMClient, LLMConfig

    for v in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(v, raising=False)
    monkeypatch.setenv("SERVE_TOKEN", "s3cret")
    models, url, layout = served
    client = LLMClient(LLMConfig(base_url=url, model="finetuned", api_key_env="SERVE_TOKEN", cache=False,
                                 timeout_s=30, max_retries=1, backoff_s=0.01))

    class Tools:
        tools = ("ask_model",)

        def overview(self):
            return {"unsteered": {"tell me a story": "the cat sat"}}

        def specs(self):
            return []

        def cost(self, tool, args):
            return len(args.get("prompts", []))

        def call(self, tool, args):
            return {"base": ["x"], "finetuned": ["y"]}

    ep = run_episode(EndpointAgent(client, max_tokens=8), Tools(), kind="blackbox", budget=2, max_turns=3,
                     protocol="text")
    assert ep.status in ("final", "no_final") and ep.turns_used == 3 and ep.error is None
    assert ep.usage.requests >= 3
    class Grader:
        def ask(self, messages, parse, **kw):
            return parse("The hypothesis misses the domain.\nSCORE: 2")

    res = run_setting(layout, EndpointAgent(client, max_tokens=8), Tools(), kind="blackbox", budget=2, runs=1,
                      grader=Grader(), organism=None, organism_type="SDF", description="cakes", max_turns=2,
                      protocol="text", progress=False)
    saved = layout.agent_episode("blackbox", 2, 0)
    ep = res.episodes[0]
    assert saved.exists() and ep.turns_used == 2
    assert ep.grade == (2.0 if ep.status == "final" else 1.0)  # no final description: the lowest grade
    assert "s3cret" not in saved.read_text()


def test_endpoint_models_ask_and_steer_through_the_server(served, monkeypatch):
    from difflens.agent.remote import EndpointModels

    for v in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(v, raising=False)
    monkeypatch.setenv("SERVE_TOKEN", "s3cret")
    _, url, _ = served
    em = EndpointModels(url, api_key_env="SERVE_TOKEN", max_tokens=4)
    out = em.ask(["tell me a story", "why"])
    assert len(out["base"]) == len(out["finetuned"]) == 2
    steered = em.steered("wiki", 2, 1, ["why"], 2)
    assert len(steered) == 1 and len(steered[0]) == 2
    assert set(em.usage()) == {"base", "finetuned", "steered-p1"}
