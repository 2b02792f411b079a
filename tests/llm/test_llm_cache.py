"""Tests for the on-disk reply cache (difflens.llm.cache), through LLMClient against the loopback
server (see llm_server.py)."""
from __future__ import annotations

import json

import pytest
from llm_server import MSGS, SECRET, make_client

from difflens.errors import LLMError
from difflens.llm import LLMReply, TokenUsage
from difflens.llm.cache import ReplyCache, cache_key


pytestmark = pytest.mark.usefixtures("llm_env")


# --------------------------------------------------------------------------------------------
# Cache
# --------------------------------------------------------------------------------------------


def test_cache_hit_makes_no_request(server, tmp_path):
    server.play(("reply", "first"), ("reply", "second"))
    client = make_client(server.url, tmp_path)
    r1 = client.chat(MSGS, temperature=0.0)
    r2 = client.chat(MSGS, temperature=0.0)
    assert server.n_requests == 1
    assert (r1.text, r1.cached) == ("first", False)
    assert (r2.text, r2.cached) == ("first", True)
    # a fresh client with the same cache dir also hits
    client2 = make_client(server.url, tmp_path)
    assert client2.chat(MSGS).text == "first"
    assert server.n_requests == 1
    assert client2.usage.cache_hits == 1 and client2.usage.requests == 0


def test_cache_key_depends_on_everything_that_matters(server, tmp_path):
    client = make_client(server.url, tmp_path)
    variants = [
        dict(),
        dict(temperature=1.0),
        dict(max_tokens=5),
        dict(tools=[{"type": "function", "function": {"name": "f"}}]),
        dict(seed=1),
        dict(cache_salt=0),
        dict(cache_salt=1),
    ]
    for v in variants:
        client.chat(MSGS, **v)
    assert server.n_requests == len(variants)
    client.chat([{"role": "user", "content": "hi!"}])
    assert server.n_requests == len(variants) + 1
    other_model = make_client(server.url, tmp_path, model="other-model")
    other_model.chat(MSGS)
    assert server.n_requests == len(variants) + 2
    # repeating all of them is free
    for v in variants:
        client.chat(MSGS, **v)
    assert server.n_requests == len(variants) + 2


def test_samples_cached_per_salt(server, tmp_path):
    server.play(("reply", "s0"), ("reply", "s1"), ("reply", "s2"))
    client = make_client(server.url, tmp_path)
    first = [client.chat(MSGS, temperature=1.2, cache_salt=i).text for i in range(3)]
    again = [client.chat(MSGS, temperature=1.2, cache_salt=i).text for i in range(3)]
    assert first == ["s0", "s1", "s2"] == again
    assert server.n_requests == 3


def test_cache_disabled(server, tmp_path):
    client = make_client(server.url, tmp_path, cache=False)
    client.chat(MSGS)
    client.chat(MSGS)
    assert server.n_requests == 2
    assert not (tmp_path / "cache").exists()


def test_default_cache_dir_is_under_difflens_home(server, tmp_path):
    client = make_client(server.url, tmp_path, cache_dir=None)
    client.chat(MSGS)
    files = list((tmp_path / "home" / "llm_cache").rglob("*.json"))
    assert len(files) == 1


def test_corrupt_cache_entry_is_ignored(server, tmp_path):
    server.play(("reply", "one"), ("reply", "two"))
    client = make_client(server.url, tmp_path)
    client.chat(MSGS)
    (f,) = list((tmp_path / "cache").rglob("*.json"))
    f.write_text("{broken")
    assert client.chat(MSGS).text == "two"
    assert server.n_requests == 2


# --------------------------------------------------------------------------------------------
# ReplyCache on its own: keys and files stay compatible with existing cache entries
# --------------------------------------------------------------------------------------------


def test_cache_key_is_pinned():
    # digests produced by the client before the cache became its own module; a change here
    # orphans every existing cache entry (bump _CACHE_VERSION on purpose if that is intended)
    url = "http://127.0.0.1:9/v1"
    assert cache_key(url, "test-model", MSGS) == (
        "576b656877264548b4b93eefae1ce17e192dcb328161288d8b2f38584e0eed23")
    assert cache_key(url, "test-model", MSGS, temperature=0.7, max_tokens=5, seed=3, cache_salt=1,
                     tools=[{"type": "function", "function": {"name": "f"}}]) == (
        "b842bd097c2eaae07be7194dbcddf452f220789014155f2f950bc053f840b1b2")


def test_client_and_cache_agree_on_keys(tmp_path):
    client = make_client("http://127.0.0.1:9/v1", tmp_path)
    cache = ReplyCache(tmp_path / "c", base_url="http://127.0.0.1:9/v1", model="test-model", scrub=str)
    kw = dict(temperature=0.5, max_tokens=3, seed=2, cache_salt="s")
    assert client.cache_key(MSGS, **kw) == cache.key(MSGS, **kw) == cache_key(
        "http://127.0.0.1:9/v1", "test-model", MSGS, **kw)
    with pytest.raises(LLMError):
        cache.key([{"role": "user", "content": object()}])


def test_existing_cache_entry_is_a_hit(server, tmp_path):
    # an entry in the on-disk format written before the split: {dir}/{key[:2]}/{key}.json
    key = cache_key(server.url, "test-model", MSGS)
    path = tmp_path / "cache" / key[:2] / f"{key}.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({
        "version": 1, "base_url": server.url, "model": "test-model", "created": 0.0,
        "reply": {"text": "from disk", "tool_calls": [], "usage": {"prompt_tokens": 1, "completion_tokens": 2},
                  "finish_reason": "stop", "model": "test-model"},
    }, indent=1), encoding="utf-8")
    client = make_client(server.url, tmp_path)
    reply = client.chat(MSGS)
    assert (reply.text, reply.cached) == ("from disk", True)
    assert server.n_requests == 0


def test_reply_cache_write_read_drop(tmp_path):
    cache = ReplyCache(tmp_path / "c", base_url="http://h:1/v1", model="m",
                       scrub=lambda t: t.replace(SECRET, "***"))
    key = cache.key(MSGS)
    assert cache.read(key) is None
    reply = LLMReply(text=f"says {SECRET}", usage=TokenUsage(prompt_tokens=3), model="m")
    cache.write(key, reply)
    assert cache.path(key) == tmp_path / "c" / key[:2] / f"{key}.json"
    assert [p.name for p in (tmp_path / "c").rglob("*") if p.is_file()] == [f"{key}.json"]
    record = json.loads(cache.path(key).read_text(encoding="utf-8"))
    assert set(record) == {"version", "base_url", "model", "created", "reply"}
    assert (record["version"], record["base_url"], record["model"]) == (1, "http://h:1/v1", "m")
    assert "cached" not in record["reply"]
    assert SECRET not in cache.path(key).read_text(encoding="utf-8")
    hit = cache.read(key)
    assert hit is not None and hit.cached and hit.text == "says ***" and hit.usage.prompt_tokens == 3
    cache.drop(key)
    assert cache.read(key) is None and not cache.path(key).exists()
    cache.drop(key)  # dropping a missing entry is fine


def test_reply_cache_defaults_to_difflens_home(tmp_path):
    cache = ReplyCache(None, base_url="http://h:1/v1", model="m", scrub=str)
    assert cache.directory == tmp_path / "home" / "llm_cache" and cache.directory.is_dir()


def test_reply_cache_unwritable_directory_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(LLMError) as ei:
        ReplyCache(blocker / "sub", base_url="http://h:1/v1", model="m", scrub=str)
    assert "cache_dir" in str(ei.value)
