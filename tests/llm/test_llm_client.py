"""Tests for difflens.llm.client (LLMClient) against a real HTTP server on loopback (see llm_server.py):
request contents, retries, API-key handling, re-asks and usage accounting."""
from __future__ import annotations

import json
import threading
import time

import pytest
from llm_server import KEY_ENV, MSGS, SECRET, completion, free_port, make_client

from difflens.errors import LLMError
from difflens.llm import LLMClient, LLMConfig, LLMReply


pytestmark = pytest.mark.usefixtures("llm_env")


# --------------------------------------------------------------------------------------------
# Basic chat, request contents
# --------------------------------------------------------------------------------------------


def test_chat_returns_text_usage_and_sends_key_in_header(server, tmp_path):
    server.play(("reply", "hello there"))
    client = make_client(server.url, tmp_path)
    reply = client.chat(MSGS, temperature=0.3, max_tokens=17)
    assert isinstance(reply, LLMReply)
    assert reply.text == "hello there"
    assert reply.cached is False
    assert reply.usage.prompt_tokens == 10 and reply.usage.completion_tokens == 5
    assert server.n_requests == 1
    req = server.requests[0]
    assert req["path"] == "/v1/chat/completions"
    assert req["body"]["model"] == "test-model"
    assert req["body"]["messages"] == MSGS
    assert req["body"]["temperature"] == 0.3
    assert req["body"]["max_tokens"] == 17
    auth = {k.lower(): v for k, v in req["headers"].items()}["authorization"]
    assert auth == f"Bearer {SECRET}"


def test_tool_calls_are_returned(server, tmp_path):
    tc = [{"id": "call_1", "type": "function",
           "function": {"name": "ask_model", "arguments": '{"prompts": ["x"]}'}}]
    server.play(("json", completion("", tool_calls=tc)))
    client = make_client(server.url, tmp_path)
    tools = [{"type": "function", "function": {"name": "ask_model", "parameters": {"type": "object"}}}]
    reply = client.chat(MSGS, tools=tools)
    assert len(reply.tool_calls) == 1
    call = reply.tool_calls[0]
    assert (call.id, call.name) == ("call_1", "ask_model")
    assert call.parsed_arguments() == {"prompts": ["x"]}
    assert server.requests[0]["body"]["tools"] == tools


# --------------------------------------------------------------------------------------------
# Retries
# --------------------------------------------------------------------------------------------


def test_retries_429_and_500_then_succeeds(server, tmp_path):
    server.play(("status", 429), ("status", 500), ("status", 503), ("reply", "finally"))
    client = make_client(server.url, tmp_path, max_retries=3)
    reply = client.chat(MSGS)
    assert reply.text == "finally"
    assert server.n_requests == 4
    u = client.usage
    assert u.requests == 4 and u.retries == 3 and u.failed_requests == 3 and u.calls == 1


def test_retries_are_bounded_and_error_names_endpoint(server, tmp_path):
    server.play(*[("status", 500)] * 10)
    client = make_client(server.url, tmp_path, max_retries=2)
    with pytest.raises(LLMError) as ei:
        client.chat(MSGS)
    assert server.n_requests == 3  # 1 try + 2 retries, no more
    msg = str(ei.value)
    assert server.url in msg and "HTTP 500" in msg and "3 time" in msg
    assert SECRET not in msg


def test_backoff_grows_exponentially(server, tmp_path):
    server.play(*[("status", 429)] * 3)
    client = make_client(server.url, tmp_path, max_retries=2, backoff_s=0.1)
    t0 = time.monotonic()
    with pytest.raises(LLMError):
        client.chat(MSGS)
    elapsed = time.monotonic() - t0
    # waits: 0.1*[1,1.5) + 0.2*[1,1.5) -> between 0.3 and 0.45 s (+ request overhead)
    assert 0.3 <= elapsed < 1.5
    assert server.n_requests == 3


def test_timeout_is_retried_then_reported(server, tmp_path):
    server.play(("sleep", 0.6), ("sleep", 0.6))
    client = make_client(server.url, tmp_path, timeout_s=0.15, max_retries=1)
    t0 = time.monotonic()
    with pytest.raises(LLMError) as ei:
        client.chat(MSGS)
    assert time.monotonic() - t0 < 1.2
    assert server.n_requests == 2
    assert "timed out" in str(ei.value)
    assert client.usage.requests == 2 and client.usage.retries == 1


def test_timeout_then_success(server, tmp_path):
    server.play(("sleep", 0.5), ("reply", "fast now"))
    client = make_client(server.url, tmp_path, timeout_s=0.15, max_retries=2)
    assert client.chat(MSGS).text == "fast now"
    assert server.n_requests == 2


def test_garbage_http_body_is_retried_then_error(server, tmp_path):
    server.play(("garbage", "<html>bad gateway</html>"), ("garbage", "{not json"),
                ("json", {"foo": "bar"}))
    client = make_client(server.url, tmp_path, max_retries=2)
    with pytest.raises(LLMError) as ei:
        client.chat(MSGS)
    assert server.n_requests == 3
    assert "no choices" in str(ei.value)


def test_garbage_body_then_valid_reply(server, tmp_path):
    server.play(("garbage", "<html>oops</html>"), ("reply", "recovered"))
    client = make_client(server.url, tmp_path)
    assert client.chat(MSGS).text == "recovered"
    assert server.n_requests == 2


def test_client_errors_are_not_retried(server, tmp_path):
    server.play(("status", 401), ("reply", "never"))
    client = make_client(server.url, tmp_path, max_retries=3)
    with pytest.raises(LLMError) as ei:
        client.chat(MSGS)
    assert server.n_requests == 1
    assert KEY_ENV in str(ei.value) and "401" in str(ei.value)
    assert SECRET not in str(ei.value)

    server.play(("status", 404))
    with pytest.raises(LLMError) as ei:
        client.chat([{"role": "user", "content": "other"}])
    assert server.n_requests == 2
    assert "404" in str(ei.value) and "model name" in str(ei.value)


def test_error_inside_200_body_is_retried(server, tmp_path):
    server.play(("json", {"error": {"message": "upstream overloaded", "code": 502}}),
                ("reply", "ok after"))
    client = make_client(server.url, tmp_path)
    assert client.chat(MSGS).text == "ok after"
    assert server.n_requests == 2


def test_unreachable_endpoint_is_a_clear_error(tmp_path):
    url = f"http://127.0.0.1:{free_port()}/v1"
    client = make_client(url, tmp_path, max_retries=1)
    t0 = time.monotonic()
    with pytest.raises(LLMError) as ei:
        client.chat(MSGS)
    assert time.monotonic() - t0 < 1.5
    msg = str(ei.value)
    assert url in msg and "could not connect" in msg and "server running" in msg
    assert client.usage.requests == 2


# --------------------------------------------------------------------------------------------
# API key handling
# --------------------------------------------------------------------------------------------


def test_missing_env_var_fails_early(monkeypatch, tmp_path):
    monkeypatch.delenv(KEY_ENV, raising=False)
    with pytest.raises(LLMError) as ei:
        LLMClient(LLMConfig(model="m", api_key_env=KEY_ENV, cache_dir=tmp_path))
    assert KEY_ENV in str(ei.value) and "not set" in str(ei.value)


def test_empty_key_env_name_or_empty_value_allowed_for_local(server, tmp_path, monkeypatch):
    server.play(("reply", "a"), ("reply", "b"))
    c1 = make_client(server.url, tmp_path, api_key_env="", cache=False)
    assert c1.chat(MSGS).text == "a"
    monkeypatch.setenv(KEY_ENV, "")
    c2 = make_client(server.url, tmp_path, cache=False)
    assert c2.chat(MSGS).text == "b"
    for req in server.requests:
        auth = {k.lower(): v for k, v in req["headers"].items()}["authorization"]
        assert auth == "Bearer EMPTY"


def test_config_rejects_a_key_in_place_of_env_name():
    with pytest.raises(ValueError):
        LLMConfig(model="m", api_key_env="sk-or-v1-abcdef0123456789abcdef")
    with pytest.raises(ValueError):
        LLMConfig(model="m", base_url="openrouter.ai")
    assert LLMConfig(model="m", base_url="http://h:1/v1/").base_url == "http://h:1/v1"


def test_key_never_written_to_cache_or_results(server, tmp_path):
    # a reply echoing the key must not put it on disk either
    server.play(("reply", "plain"), ("reply", f"leaky {SECRET}"), ("status", 500), ("reply", "x"))
    client = make_client(server.url, tmp_path)
    client.chat(MSGS)
    client.chat([{"role": "user", "content": "second"}])
    client.chat([{"role": "user", "content": "third"}])
    client.chat(MSGS)  # cache hit
    files = [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]
    assert len(files) == 3
    for p in files:
        assert SECRET not in p.read_text(encoding="utf-8", errors="replace")
        assert SECRET.encode() not in p.read_bytes()
    assert SECRET not in json.dumps(client.usage_summary())
    assert SECRET not in client.config.model_dump_json()
    assert SECRET not in repr(client)




# --------------------------------------------------------------------------------------------
# ask() and re-asks
# --------------------------------------------------------------------------------------------


def parse_int(text: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        raise ValueError(f"expected a bare integer, got {text.strip()[:20]!r}") from None


def test_ask_reasks_on_parse_error(server, tmp_path):
    server.play(("reply", "forty-two"), ("reply", "42"))
    client = make_client(server.url, tmp_path)
    assert client.ask(MSGS, parse=parse_int, format_hint="a bare integer") == 42
    assert server.n_requests == 2
    second = server.requests[1]["body"]["messages"]
    assert second[:2] == MSGS
    assert second[2] == {"role": "assistant", "content": "forty-two"}
    assert second[3]["role"] == "user"
    assert "expected a bare integer" in second[3]["content"]
    assert "a bare integer" in second[3]["content"]
    assert client.usage.reasks == 1


def test_ask_gives_up_after_max_reasks_and_quotes_last_reply(server, tmp_path):
    server.play(("reply", "nope"), ("reply", "still no"), ("reply", "never a number"),
                ("reply", "7"))
    client = make_client(server.url, tmp_path, max_reasks=2)
    with pytest.raises(LLMError) as ei:
        client.ask(MSGS, parse=parse_int)
    assert server.n_requests == 3
    assert "never a number" in str(ei.value)
    assert client.usage.reasks == 2
    # unparseable replies were not cached: a retry asks the endpoint again
    assert not list((tmp_path / "cache").rglob("*.json"))


def test_ask_caches_good_replies(server, tmp_path):
    server.play(("reply", "bad"), ("reply", "5"))
    client = make_client(server.url, tmp_path)
    assert client.ask(MSGS, parse=parse_int) == 5
    assert server.n_requests == 2
    # rerun: the first (bad) reply was not cached, endpoint now answers well directly
    server.play(("reply", "6"))
    assert client.ask(MSGS, parse=parse_int) == 6
    assert server.n_requests == 3
    assert client.ask(MSGS, parse=parse_int) == 6
    assert server.n_requests == 3


def test_ask_with_zero_reasks(server, tmp_path):
    server.play(("reply", "x"), ("reply", "1"))
    client = make_client(server.url, tmp_path, max_reasks=0)
    with pytest.raises(LLMError):
        client.ask(MSGS, parse=parse_int)
    assert server.n_requests == 1


# --------------------------------------------------------------------------------------------
# Usage accounting
# --------------------------------------------------------------------------------------------


def test_usage_counts_and_cost(server, tmp_path):
    server.play(
        ("json", completion("a", prompt_tokens=100, completion_tokens=20)),
        ("status", 429),
        ("json", completion("b", prompt_tokens=200, completion_tokens=30)),
    )
    client = make_client(server.url, tmp_path, price_in_per_mtok=1.0, price_out_per_mtok=4.0)
    client.chat(MSGS)
    client.chat([{"role": "user", "content": "q2"}])
    client.chat(MSGS)  # cache hit: no tokens, no cost
    u = client.usage
    assert (u.calls, u.requests, u.retries, u.cache_hits) == (3, 3, 1, 1)
    assert (u.prompt_tokens, u.completion_tokens) == (300, 50)
    assert u.cost_usd == pytest.approx((300 * 1.0 + 50 * 4.0) / 1e6)
    summary = client.usage_summary()
    assert summary["total_tokens"] == 350
    assert summary["model"] == "test-model" and summary["base_url"] == server.url
    json.dumps(summary)  # JSON-ready


def test_cost_is_none_without_prices(server, tmp_path):
    client = make_client(server.url, tmp_path)
    client.chat(MSGS)
    assert client.usage.cost_usd is None
    assert client.usage.prompt_tokens == 10


def test_client_is_thread_safe(server, tmp_path):
    client = make_client(server.url, tmp_path)
    results: list[str] = []

    def work(i: int) -> None:
        results.append(client.chat([{"role": "user", "content": f"q{i}"}]).text)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 8
    assert client.usage.requests == 8 == server.n_requests
    assert client.usage.prompt_tokens == 80
