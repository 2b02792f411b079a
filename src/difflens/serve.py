"""``difflens serve RUN``: an OpenAI-compatible HTTP endpoint over a run's models.

Models: ``base``, ``finetuned`` and ``steered-p{j}`` — the finetuned model steered with δ̄_j at the
run's stored threshold α_j (first collected dataset and layer, or those given). Routes:
``GET /v1/models`` and ``POST /v1/chat/completions`` (multi-turn messages, ``temperature``,
``max_tokens``, ``seed``, ``stream``: server-sent events in the OpenAI chunk format — the completion
is generated first, then sent in chunks). Any
OpenAI-compatible client works against it — the agent's ``ask_model``, the agent itself (a small
model as the agent), or a person with curl.

Loopback only by default; ``token`` (read by the CLI from an environment variable, never logged)
requires ``Authorization: Bearer <token>``. Requests are served one at a time per model pair (a
lock around generation); the HTTP side is threaded so /v1/models stays responsive.
"""
from __future__ import annotations

import hmac
import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Sequence

import torch

__all__ = ["ServedModels", "make_server"]


@dataclass
class ServedModels:
    """The pair of a run and its steering thresholds, as named chat models."""

    pair: Any
    layer: int | None = None
    eta: float = 1.0
    steering: dict[int, tuple[torch.Tensor, float]] = field(default_factory=dict)  # j → (δ̄_j, α_j)
    default_max_tokens: int = 256
    lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def from_run(cls, layout: Any, *, dataset: str | None = None, layer: int | None = None,
                 pair: Any = None) -> "ServedModels":
        from .adl.collect import load_collected
        from .files import read_json
        from .rundir import artifacts as A
        from .models.pair import pair_from_run

        manifest = read_json(layout.manifest)
        ds = dataset or manifest["datasets"][0]["name"]
        li = layer if layer is not None else manifest["layers"][0]["absolute"]
        pair = pair or pair_from_run(layout)
        steering: dict[int, tuple[torch.Tensor, float]] = {}
        eta = 1.0
        path = layout.steering(ds, li)
        if path.exists():
            res = A.load(A.SteeringResult, path)
            c = load_collected(layout, ds, li)
            eta = res.eta_ft
            steering = {t.position: (c.delta[t.position], t.alpha) for t in res.thresholds}
        return cls(pair=pair, layer=li, eta=eta, steering=steering)

    def names(self) -> list[str]:
        return ["base", "finetuned", *[f"steered-p{j}" for j in sorted(self.steering)]]

    def _ids(self, messages: Sequence[dict[str, Any]]) -> list[int]:
        from .data.chat import render_chat
        from .models.tokens import rendered_chat_ids

        msgs = [{"role": m.get("role", "user"), "content": m.get("content") or ""} for m in messages]
        text = render_chat(self.pair.tokenizer, msgs, add_generation_prompt=True)
        return rendered_chat_ids(self.pair.tokenizer, self.pair.arch, text)

    def generate(self, model: str, messages: Sequence[dict[str, Any]], *, max_tokens: int | None = None,
                 temperature: float = 1.0, seed: int | None = None) -> tuple[str, int, int]:
        """(text, prompt tokens, completion tokens) of one chat completion."""
        from .adl.steering import steering_hook, steering_vectors
        from .models.tokens import pad_id, pad_left

        if model not in self.names():
            raise KeyError(model)
        ids = self._ids(messages)
        side = "base" if model == "base" else "ft"
        x, mask = pad_left([ids], pad_id(self.pair.tokenizer), self.pair.input_device(side))
        tok = self.pair.tokenizer
        add = None
        if model.startswith("steered-p"):
            delta, alpha = self.steering[int(model.split("steered-p", 1)[1])]
            add = steering_vectors(delta, [alpha], self.eta)
        with self.lock, torch.no_grad():
            if seed is not None:
                torch.manual_seed(int(seed))
            with self.pair.side(side) as m, steering_hook(self.pair, self.layer, add, mask):
                kw: dict[str, Any] = {"do_sample": temperature > 0, "max_new_tokens": int(max_tokens or
                                                                                        self.default_max_tokens),
                                      "pad_token_id": tok.pad_token_id}
                if temperature > 0:
                    kw.update(temperature=float(temperature), top_p=1.0, top_k=0)
                out = m.generate(input_ids=x, attention_mask=mask, **kw)
        new = out[0, x.shape[1]:]
        return tok.decode(new, skip_special_tokens=True), len(ids), int(new.shape[0])


def _completion(model: str, text: str, prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
    return {"id": f"chatcmpl-{uuid.uuid4().hex[:12]}", "object": "chat.completion", "created": int(time.time()),
            "model": model, "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                         "finish_reason": "stop"}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens}}


def make_server(models: ServedModels, *, host: str = "127.0.0.1", port: int = 0,
                token: str | None = None) -> ThreadingHTTPServer:
    """A threaded HTTP server (not started: call ``serve_forever``, e.g. in a thread)."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:  # no request log (it could carry prompts)
            pass

        def _send(self, code: int, obj: Any) -> None:
            data = json.dumps(obj).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _error(self, code: int, msg: str) -> None:
            self._send(code, {"error": {"message": msg, "type": "invalid_request_error" if code < 500 else
                                        "server_error"}})

        def _authorized(self) -> bool:
            if token is None:
                return True
            got = self.headers.get("Authorization", "")
            if got.startswith("Bearer ") and hmac.compare_digest(got[7:].strip(), token):
                return True
            self._error(401, "missing or wrong bearer token")
            return False

        def do_GET(self) -> None:  # noqa: N802 - http.server API
            if not self._authorized():
                return
            if self.path.rstrip("/") == "/v1/models":
                self._send(200, {"object": "list", "data": [{"id": n, "object": "model", "owned_by": "difflens"}
                                                            for n in models.names()]})
            else:
                self._error(404, f"no route {self.path}")

        def do_POST(self) -> None:  # noqa: N802 - http.server API
            if not self._authorized():
                return
            if self.path.rstrip("/") != "/v1/chat/completions":
                self._error(404, f"no route {self.path}")
                return
            try:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
                model, messages = body.get("model"), body.get("messages")
                if not isinstance(messages, list) or not messages:
                    raise ValueError("'messages' must be a non-empty list")
                if model not in models.names():
                    self._error(404, f"unknown model {model!r}; available: {', '.join(models.names())}")
                    return
            except ValueError as e:
                self._error(400, f"bad request: {e}")
                return
            try:
                text, pt, ct = models.generate(model, messages, max_tokens=body.get("max_tokens"),
                                               temperature=float(body.get("temperature", 1.0)), seed=body.get("seed"))
            except Exception as e:  # noqa: BLE001 - the client gets a 500 with the reason
                self._error(500, f"generation failed: {type(e).__name__}: {e}")
                return
            if not body.get("stream"):
                self._send(200, _completion(model, text, pt, ct))
                return
            cid, created = f"chatcmpl-{uuid.uuid4().hex[:12]}", int(time.time())
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-cache")
            self.send_header("Connection", "close")
            self.end_headers()

            def event(delta: dict[str, Any], finish: str | None) -> None:
                chunk = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                         "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
                self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())

            event({"role": "assistant", "content": ""}, None)
            for k in range(0, len(text), 16):
                event({"content": text[k:k + 16]}, None)
            event({}, "stop")
            self.wfile.write(b"data: [DONE]\n\n")
            self.wfile.flush()
            self.close_connection = True

    class Server(ThreadingHTTPServer):
        daemon_threads = True
        block_on_close = False

    return Server((host, port), Handler)
