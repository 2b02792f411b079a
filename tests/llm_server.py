"""The loopback chat-completions server and shared fixtures for the tests under tests/llm.

The server (http.server in a thread) implements ``POST /v1/chat/completions`` and plays a script
of actions: normal replies, HTTP errors (429, 500, 401, 404), sleeps longer than the client's
timeout, and bodies that are not JSON. Every request it receives is recorded, so the tests can
assert exactly how many HTTP requests the client made.

Each test module declares two short fixtures that delegate here (tests/llm has no conftest.py of
its own): ``server`` (``yield from serving()``) and the autouse ``_env`` (``llm_env(...)``), which
puts the key variable, a private DIFFLENS_HOME and no-proxy settings in place for every test.
"""
from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from difflens.llm import LLMClient, LLMConfig

__all__ = ["SECRET", "KEY_ENV", "MSGS", "completion", "ScriptedServer", "server", "llm_env",
           "make_client", "free_port"]

SECRET = "sk-test-DO-NOT-LEAK-4b1f9e7c"
KEY_ENV = "DIFFLENS_TEST_LLM_KEY"


# --------------------------------------------------------------------------------------------
# Scripted server
# --------------------------------------------------------------------------------------------


def completion(text: str = "ok", *, prompt_tokens: int = 10, completion_tokens: int = 5,
               tool_calls: list[dict] | None = None) -> dict:
    message: dict[str, Any] = {"role": "assistant", "content": text}
    if tool_calls:
        message["tool_calls"] = tool_calls
    return {
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "created": 0,
        "model": "test-model",
        "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


class ScriptedServer:
    """A loopback chat-completions server replaying a list of actions, one per request.

    Actions: ``("reply", text)``, ``("json", dict)``, ``("status", code)``,
    ``("sleep", seconds)`` (then a normal reply) and ``("garbage", raw_text)``. When the script
    is exhausted it answers ``"default"``.
    """

    def __init__(self) -> None:
        self.script: list[tuple] = []
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # keep test output quiet
                pass

            def do_POST(self) -> None:  # noqa: N802 - http.server API
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                with outer.lock:
                    outer.requests.append(
                        {"path": self.path, "headers": dict(self.headers), "body": json.loads(raw)}
                    )
                    action = outer.script.pop(0) if outer.script else ("reply", "default")
                if self.path != "/v1/chat/completions":
                    self._send(404, json.dumps({"error": {"message": "no such route"}}))
                    return
                kind = action[0]
                if kind == "reply":
                    self._send(200, json.dumps(completion(action[1])))
                elif kind == "json":
                    self._send(200, json.dumps(action[1]))
                elif kind == "status":
                    self._send(action[1], json.dumps({"error": {"message": f"scripted {action[1]}"}}))
                elif kind == "sleep":
                    time.sleep(action[1])
                    try:
                        self._send(200, json.dumps(completion("slept")))
                    except OSError:
                        pass
                elif kind == "garbage":
                    self._send(200, action[1], ctype="application/json")
                else:  # pragma: no cover - test bug
                    raise AssertionError(kind)

            def _send(self, code: int, body: str, ctype: str = "application/json") -> None:
                data = body.encode()
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            block_on_close = False

        self.httpd = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self.thread.start()

    def play(self, *actions: tuple) -> None:
        with self.lock:
            self.script = list(actions)

    @property
    def n_requests(self) -> int:
        with self.lock:
            return len(self.requests)

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture()
def server() -> Iterator[ScriptedServer]:
    """A fresh scripted loopback server, closed afterwards."""
    s = ScriptedServer()
    yield s
    s.close()


@pytest.fixture()
def llm_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The API key in its variable, an isolated DIFFLENS_HOME, and no proxy for loopback traffic
    (test modules use it with ``pytestmark = pytest.mark.usefixtures("llm_env")``)."""
    monkeypatch.setenv(KEY_ENV, SECRET)
    monkeypatch.setenv("DIFFLENS_HOME", str(tmp_path / "home"))
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")


def make_client(url: str, tmp_path: Path, **over: Any) -> LLMClient:
    cfg = dict(
        base_url=url,
        model="test-model",
        api_key_env=KEY_ENV,
        timeout_s=2.0,
        max_retries=3,
        backoff_s=0.01,
        max_reasks=2,
        cache=True,
        cache_dir=tmp_path / "cache",
    )
    cfg.update(over)
    return LLMClient(LLMConfig(**cfg))


MSGS = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
