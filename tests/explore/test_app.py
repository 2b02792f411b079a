"""The explorer's application on a tiny run, through Starlette's test client: every route, the SSE format
token by token, α and β really applied (amplification = ``amplified_generate``), the bad-request table,
the bearer token, 429 with Retry-After when the queue is full, a cancelled stream, the heat map's values
against the kl method's own store and a naive computation, and the views rendered by the report."""
from __future__ import annotations

import json
import threading
import time

import pytest
import torch
import torch.nn.functional as F
from starlette.testclient import TestClient

from difflens.explore import create_app
from difflens.explore.service import Job, Limits, ModelService
from explore_runs import build_run, service, tiny_explore  # noqa: F401  (fixtures)

MSGS = [{"role": "user", "content": "tell me a story"}]


@pytest.fixture(scope="module")
def client(service, tiny_explore):
    _, layout, _ = tiny_explore
    with TestClient(create_app(service, layout=layout)) as c:
        yield c


def _events(text: str) -> list[str]:
    """The ``data:`` payloads of an SSE body (every event one ``data:`` line and a blank line)."""
    assert text.endswith("\n\n")
    out = []
    for ev in text.split("\n\n")[:-1]:
        assert ev.startswith("data: ") and "\n" not in ev, ev
        out.append(ev[6:])
    return out


def _chat(client, **body):
    return client.post("/v1/chat/completions", json={"messages": MSGS, **body})


def test_models_lists_every_model_with_what_it_is(client, service):
    data = client.get("/v1/models").json()["data"]
    assert [m["id"] for m in data] == ["base", "finetuned", "steered-p1", "amplified"]
    steered = data[2]["difflens"]
    assert steered == {"kind": "steered", "position": 1, "alpha": 40.0, "layer": 2, "eta": service.eta}
    assert data[3]["difflens"]["beta"] == 1.0 and data[3]["difflens"]["beta_from_run"] is False
    assert client.get("/healthz").json()["status"] == "ok"


def test_stream_is_one_event_per_token_and_matches_the_completion(client):
    whole = _chat(client, model="finetuned", temperature=0, max_tokens=6).json()
    assert whole["object"] == "chat.completion" and whole["usage"]["completion_tokens"] == 6
    r = _chat(client, model="finetuned", temperature=0, max_tokens=6, stream=True,
              stream_options={"include_usage": True})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = _events(r.text)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" and c["id"] == chunks[0]["id"] for c in chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    content = [c["choices"][0]["delta"]["content"] for c in chunks[1:] if c["choices"] and
               c["choices"][0]["delta"].get("content")]
    assert len(content) == 6  # a word-level tokenizer: every token is one event
    assert "".join(content) == whole["choices"][0]["message"]["content"]
    final = [c for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert len(final) == 1 and final[0]["choices"][0]["finish_reason"] == "length"
    assert final[0]["difflens"]["temperature"] == 0 and "seed" in final[0]["difflens"]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 6


def test_alpha_steers_and_zero_alpha_is_the_finetuned_model(client):
    def say(**kw):
        return _chat(client, temperature=0, max_tokens=8, **kw).json()["choices"][0]["message"]["content"]

    ft, at_threshold = say(model="finetuned"), say(model="steered-p1")
    assert at_threshold != ft
    assert say(model="steered-p1", alpha=0) == ft
    assert say(model="steered-p1", alpha=10) not in (ft, at_threshold)
    assert say(model="steered-p1", alpha=40.0) == at_threshold  # the threshold is the default


def test_amplified_stream_draws_what_amplified_generate_draws(service):
    from difflens.methods.amplify import amplified_generate
    from difflens.models.tokens import chat_prompt_ids

    pair = service.pair
    prompt = "tell me a story"
    ids = service.prompt_ids([{"role": "user", "content": prompt}])
    assert ids == chat_prompt_ids(pair.tokenizer, pair.ft_arch, prompt)
    for beta in (0.0, 2.0):
        ref = amplified_generate(pair, [prompt], beta, temperature=1.0, max_new_tokens=10, seed=3)[0]
        spec = service.resolve("amplified", beta=beta)
        got = [t for t, _ in service.generate_ids(spec, ids, max_tokens=10, temperature=1.0, seed=3)]
        assert got == ref
    # β = 0 is the finetuned model alone, sampled as generate() samples it
    ft = [t for t, _ in service.generate_ids(service.resolve("finetuned"), ids, max_tokens=10, temperature=1.0, seed=3)]
    assert ft == amplified_generate(pair, [prompt], side="ft", temperature=1.0, max_new_tokens=10, seed=3)[0]


BAD = [  # (what, request kwargs, status, message fragment)
    ("invalid JSON", {"content": b"{not json", "headers": {"content-type": "application/json"}}, 400, "invalid JSON"),
    ("a JSON array", {"json": [1, 2]}, 400, "JSON object"),
    ("an unknown field", {"json": {"model": "base", "messages": MSGS, "tools_x": 1}}, 400, "unknown field"),
    ("no model", {"json": {"messages": MSGS}}, 400, "'model'"),
    ("no messages", {"json": {"model": "base"}}, 400, "'messages'"),
    ("empty messages", {"json": {"model": "base", "messages": []}}, 400, "'messages'"),
    ("too many messages", {"json": {"model": "base", "messages": MSGS * 9}}, 400, "at most 8"),
    ("a message over the limit", {"json": {"model": "base", "messages": [{"role": "user", "content": "x" * 2001}]}},
     400, "at most 2000"),
    ("a bad role", {"json": {"model": "base", "messages": [{"role": "robot", "content": "x"}]}}, 400, "role"),
    ("huge max_tokens", {"json": {"model": "base", "messages": MSGS, "max_tokens": 10 ** 9}}, 400, "between 1 and 64"),
    ("max_tokens 0", {"json": {"model": "base", "messages": MSGS, "max_tokens": 0}}, 400, "max_tokens"),
    ("a string temperature", {"json": {"model": "base", "messages": MSGS, "temperature": "hot"}}, 400, "temperature"),
    ("temperature 5", {"json": {"model": "base", "messages": MSGS, "temperature": 5}}, 400, "temperature"),
    ("a negative seed", {"json": {"model": "base", "messages": MSGS, "seed": -1}}, 400, "seed"),
    ("alpha for base", {"json": {"model": "base", "messages": MSGS, "alpha": 3}}, 400, "alpha"),
    ("beta out of range", {"json": {"model": "amplified", "messages": MSGS, "beta": 1e9}}, 400, "beta"),
    ("n = 2", {"json": {"model": "base", "messages": MSGS, "n": 2}}, 400, "'n'"),
    ("an unknown model", {"json": {"model": "gpt-9", "messages": MSGS}}, 404, "unknown model"),
    ("a body over the limit (1 MB message)", {"json": {"model": "base", "messages": [{"role": "user",
                                                                                     "content": "x" * (1 << 20)}]}},
     413, "bytes"),
]


@pytest.mark.parametrize("what,kw,status,fragment", BAD, ids=[b[0] for b in BAD])
def test_bad_requests_get_their_status_and_the_server_goes_on(client, what, kw, status, fragment):
    r = client.post("/v1/chat/completions", **kw)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert fragment in err["message"] and err["type"]
    assert _chat(client, model="base", max_tokens=2).status_code == 200


def test_unknown_routes_and_methods(client):
    assert client.get("/v1/nothing").status_code == 404
    assert "no route" in client.get("/v1/nothing").json()["error"]["message"]
    assert client.get("/v1/chat/completions").status_code == 405
    assert client.get("/fragments/nothing").status_code == 404
    assert client.get("/static/../service.py").status_code == 404
    assert client.get("/static/nothing.js").status_code == 404


def test_bearer_token_and_the_login_cookie(service, tiny_explore):
    _, layout, _ = tiny_explore
    with TestClient(create_app(service, layout=layout, token="s3cret")) as c:
        assert c.get("/healthz").status_code == 200  # liveness needs no token
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic s3cret"}):
            r = c.get("/v1/models", headers=headers)
            assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
            assert "s3cret" not in r.text
        assert _chat(c, model="base", max_tokens=2).status_code == 401
        ok = {"Authorization": "Bearer s3cret"}
        assert c.get("/v1/models", headers=ok).status_code == 200
        page = c.get("/")
        assert page.status_code == 401 and 'action="/login"' in page.text and "s3cret" not in page.text
        c.post("/login", data={"token": "wrong"}, follow_redirects=False)
        assert c.get("/api/info").status_code == 401
        r = c.post("/login", data={"token": "s3cret"}, follow_redirects=False)
        assert r.status_code == 303 and "httponly" in r.headers["set-cookie"].lower()
        assert c.get("/api/info").status_code == 200 and c.get("/").status_code == 200
        c.post("/logout", follow_redirects=False)
        c.cookies.clear()
        assert c.get("/api/info").status_code == 401


def test_a_full_queue_answers_429_with_retry_after(tiny_explore):
    pair, layout, _ = tiny_explore
    svc = ModelService.from_run(layout, pair=pair, limits=Limits(max_queue=1, default_max_tokens=2))
    gate, started = threading.Event(), threading.Event()

    def block(job):
        started.set()
        gate.wait(10)
        job.emit("done", {})

    with TestClient(create_app(svc, pages=False)) as c:
        svc.submit(Job(block))  # the worker is busy
        assert started.wait(5)
        svc.submit(Job(lambda job: job.emit("done", {})))  # one waits: the queue is full
        r = _chat(c, model="base")
        assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
        assert r.json()["error"]["type"] == "rate_limit_error"
        assert c.post("/api/heatmap", json={"text": "the cat"}).status_code in (404,)  # no pages on serve
        gate.set()
        for _ in range(100):
            if svc.queued() == 0 and svc.running is None:
                break
            time.sleep(0.02)
        assert _chat(c, model="base").status_code == 200


def test_a_cancelled_job_stops_and_the_worker_goes_on(service):
    ids = service.prompt_ids(MSGS)
    spec = service.resolve("finetuned")
    job = service.chat_job(spec, ids, max_tokens=60, temperature=1.0, seed=0)
    slow = service.generate_ids

    def slowly(*a, **kw):
        for item in slow(*a, **kw):
            time.sleep(0.01)
            yield item
            job.cancel()  # the client went away after the first token

    service.generate_ids = slowly  # type: ignore[method-assign]
    try:
        service.submit(job)
        kind, done = job.wait(timeout=20)
    finally:
        del service.generate_ids
    assert kind == "done" and done["finish_reason"] == "cancelled" and done["completion_tokens"] <= 2
    again = service.submit(service.chat_job(spec, ids, max_tokens=3, temperature=0, seed=0))
    assert again.wait(timeout=20)[1]["completion_tokens"] == 3


def test_a_failing_job_is_an_error_event_and_the_worker_goes_on(service):
    def boom(job):
        raise RuntimeError("kaput")

    assert service.submit(Job(boom)).wait(timeout=10) == ("error", "RuntimeError: kaput")
    ok = service.submit(Job(lambda job: job.emit("done", 1)))
    assert ok.wait(timeout=10) == ("done", 1)


def test_heat_map_values_are_the_kl_methods_values(client, service, tiny_explore):
    """The heat map of a text equals what the kl method stores for the same tokens, and a naive
    computation from the models' logits and hidden states."""
    from difflens.methods.driver import PassConfig, make_method, open_examples, run_methods
    from difflens.models.tokens import encode

    pair, layout, _ = tiny_explore
    text = "the cat sat on the mat and the dog ran to the river"
    heat = client.post("/api/heatmap", json={"text": text}).json()
    ids = encode(pair.tokenizer, pair.arch, text)
    assert heat["ids"] == ids and len(heat["tokens"]) == len(ids) and heat["layer"] == service.layer
    # the kl method over a one-text corpus: the store keeps every position's values
    corpus = layout.root.parent / "one.jsonl"
    corpus.write_text(json.dumps({"text": text}) + "\n")
    run_methods(pair, layout, [make_method("kl", layer=service.layer, skip_positions=0)],
                PassConfig(dataset=str(corpus), samples=1, tokens=len(ids)), progress=False)
    with open_examples(layout, str(corpus)) as store:
        ex = store.top("kl_max", 0, 1)[0]
    assert ex.ids == ids
    for stat in ("kl", "norm", "cos", "ent"):
        assert heat["stats"][stat] == pytest.approx(ex.values[stat], rel=1e-5, abs=1e-6), stat
    # naive: full forward passes, KL and logit difference by hand
    x = torch.tensor([ids])
    with torch.no_grad():
        ob = pair.base_lm.model(input_ids=x, output_hidden_states=True)
        of = pair.ft_lm.model(input_ids=x, output_hidden_states=True)
    lb, lf = ob.logits[0].float(), of.logits[0].float()
    kl = (F.softmax(lf, -1) * (F.log_softmax(lf, -1) - F.log_softmax(lb, -1))).sum(-1)
    assert heat["stats"]["kl"] == pytest.approx(kl.tolist(), rel=1e-4, abs=1e-5)
    li = service.layer
    norm = (of.hidden_states[li + 1][0] - ob.hidden_states[li + 1][0]).norm(dim=-1)
    assert heat["stats"]["norm"] == pytest.approx(norm.tolist(), rel=1e-4, abs=1e-5)
    ld = [float(lf[t, ids[t + 1]] - lb[t, ids[t + 1]]) for t in range(len(ids) - 1)]
    assert heat["stats"]["logit_diff"][:-1] == pytest.approx(ld, rel=1e-4, abs=1e-4)
    assert heat["stats"]["logit_diff"][-1] is None and heat["next"][0] == heat["tokens"][1]
    dp = F.softmax(lf, -1) - F.softmax(lb, -1)
    t = 3
    assert [r["id"] for r in heat["raised"][t]] == dp[t].topk(5).indices.tolist()
    assert [r["id"] for r in heat["lowered"][t]] == (-dp[t]).topk(5).indices.tolist()
    assert heat["raised"][t][0]["dp"] == pytest.approx(float(dp[t].max()), rel=1e-4)


def test_heat_map_bad_requests(client):
    assert client.post("/api/heatmap", json={"text": ""}).status_code == 400
    assert client.post("/api/heatmap", json={"text": 3}).status_code == 400
    assert client.post("/api/heatmap", json={"text": "x" * 40_000}).status_code == 400
    assert client.post("/api/heatmap", json={"text": "the cat", "top": 99}).status_code == 400
    assert client.post("/api/heatmap", content=b"nope").status_code == 400


def test_page_info_and_the_views_are_the_reports(client, tiny_explore):
    from difflens.report.gather import gather
    from difflens.report.html import _patchscope_block

    _, layout, _ = tiny_explore
    page = client.get("/")
    assert page.status_code == 200 and '/static/explore.js' in page.text and 'data-tab="examples"' in page.text
    assert client.get("/static/explore.js").headers["content-type"].startswith("text/javascript")
    assert client.get("/static/explore.css").status_code == 200
    info = client.get("/api/info").json()
    assert info["steering"] == [{"position": 1, "alpha": 40.0}] and info["layer"] == 2
    assert "amplify" in info["notes"] and "steer" not in info["notes"]
    ps = client.get("/fragments/patchscope").text
    _, slices = gather(layout)
    assert _patchscope_block(slices[0]) in ps and ps.count('<details class="scales">') == 2 * 3  # positions × sources
    assert 'data-scales="open"' in ps and "λ =" in ps
    ex = client.get("/fragments/examples").text
    assert 'name="stat"' in ex and "page <b>1</b> of 3" in ex and ex.count('class="card example"') == 8
    ex3 = client.get("/fragments/examples?stat=norm_mean&page=2").text
    assert "page <b>3</b> of 3" in ex3 and ex3.count('class="card example"') == 4 and 'value="norm_mean" selected' in ex3
    run = client.get("/fragments/run").text
    assert "Stages" in run and "Steering" in run and f"difflens evaluate {layout.root}" in run
    assert f"difflens agent {layout.root}" in run


def test_a_run_without_steering_or_methods_says_what_to_run(tmp_path):
    pair, layout, _ = build_run(tmp_path, stages=())
    svc = ModelService.from_run(layout, pair=pair, limits=Limits(default_max_tokens=2))
    with TestClient(create_app(svc, layout=layout)) as c:
        info = c.get("/api/info").json()
        assert info["notes"]["steer"] == f"no steering yet: run `difflens steer {layout.root}`"
        assert [m["id"] for m in info["models"]] == ["base", "finetuned", "amplified"]
        assert _chat(c, model="steered-p1").status_code == 404
        assert "no Patchscope yet" in c.get("/fragments/patchscope").text
        assert f"difflens diff {layout.root} --methods kl" in c.get("/fragments/examples").text
        assert c.get("/fragments/run").status_code == 200
        assert _chat(c, model="amplified", max_tokens=2).status_code == 200


def _held(service, jobs):
    """Submit ``jobs`` while the worker is held busy, then let it go: they run as one batch."""
    gate, started = threading.Event(), threading.Event()

    def block(job):
        started.set()
        gate.wait(10)
        job.emit("done", {})

    service.submit(Job(block))
    assert started.wait(5)
    for j in jobs:
        service.submit(j)
    gate.set()
    return [j.wait(timeout=60) for j in jobs]


def test_queued_completions_run_as_one_batch_with_the_solo_answers(tiny_explore):
    """Completions waiting together on one side run in one HF batch (each row its own steering vector
    and its own seeded generator): greedy answers equal the one-at-a-time answers, a sampled answer at
    a seed does not depend on who shares its batch, and a base request waits for its own batch."""
    pair, layout, _ = tiny_explore
    svc = ModelService.from_run(layout, pair=pair, limits=Limits(max_tokens=64, max_queue=16))
    ids = {p: svc.prompt_ids([{"role": "user", "content": p}]) for p in ("tell me a story", "why")}

    def job(model, prompt, *, temperature=0.0, seed=0, max_tokens=6, **kw):
        return svc.chat_job(svc.resolve(model, **kw), ids[prompt], max_tokens=max_tokens, temperature=temperature,
                            seed=seed)

    asks = [("finetuned", "why", {}), ("steered-p1", "why", {}), ("steered-p1", "tell me a story", {"alpha": 10.0}),
            ("finetuned", "tell me a story", {"max_tokens": 3}), ("base", "why", {})]
    solo = [svc.submit(job(m, p, **kw)).wait(timeout=60) for m, p, kw in asks]
    together = _held(svc, [job(m, p, **kw) for m, p, kw in asks])
    assert [k for k, _ in together] == ["done"] * 5
    assert [d["text"] for _, d in together] == [d["text"] for _, d in solo]
    assert [d["batch"] for _, d in solo] == [1] * 5
    assert [d["batch"] for _, d in together] == [4, 4, 4, 4, 1]  # the base request is another side
    assert together[3][1]["completion_tokens"] == 3 and together[1][1]["text"] != together[0][1]["text"]
    # sampling: each row's own generator
    a = _held(svc, [job("finetuned", "why", temperature=1.0, seed=7, max_tokens=10),
                    job("finetuned", "tell me a story", temperature=1.0, seed=1)])
    b = _held(svc, [job("steered-p1", "tell me a story", temperature=1.0, seed=3),
                    job("finetuned", "why", temperature=1.0, seed=7, max_tokens=10),
                    job("finetuned", "why", temperature=1.0, seed=8, max_tokens=10)])
    assert a[0][1]["batch"] == 2 and b[1][1]["batch"] == 3
    assert a[0][1]["text"] == b[1][1]["text"] and b[1][1]["text"] != b[2][1]["text"]


def test_queued_amplified_completions_batch_each_at_its_own_beta(tiny_explore):
    pair, layout, _ = tiny_explore
    svc = ModelService.from_run(layout, pair=pair, limits=Limits(max_tokens=64, max_queue=16))
    ids = svc.prompt_ids(MSGS)

    def job(beta, *, temperature=0.0, seed=0):
        return svc.chat_job(svc.resolve("amplified", beta=beta), ids, max_tokens=8, temperature=temperature, seed=seed)

    solo = [svc.submit(job(b)).wait(timeout=60)[1] for b in (0.0, 2.0, 8.0)]
    together = [d for _, d in _held(svc, [job(b) for b in (0.0, 2.0, 8.0)] + [job(2.0, temperature=1.0, seed=4)])]
    assert [d["batch"] for d in together] == [4] * 4 and [d["beta"] for d in together] == [0.0, 2.0, 8.0, 2.0]
    assert [d["text"] for d in together[:3]] == [d["text"] for d in solo]
    again = _held(svc, [job(2.0, temperature=1.0, seed=4), job(0.5, temperature=1.0, seed=9)])
    assert again[0][1]["text"] == together[3]["text"]
    # each row at its own β: sampled at one seed, β = 0 and β = 8 side by side differ as they do alone
    alone = [svc.submit(job(b, temperature=1.0, seed=4)).wait(timeout=60)[1]["text"] for b in (0.0, 8.0)]
    side_by_side = [d["text"] for _, d in _held(svc, [job(b, temperature=1.0, seed=4) for b in (0.0, 8.0)])]
    assert alone[0] != alone[1] and side_by_side[0] != side_by_side[1]
