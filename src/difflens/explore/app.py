"""The ASGI application of ``difflens serve`` and ``difflens explore`` (Starlette).

OpenAI-compatible routes (both commands):

- ``GET /v1/models`` — base, finetuned, steered-p{j}, amplified (each with what it is, under ``difflens``)
- ``POST /v1/chat/completions`` — ``model``, ``messages``, ``max_tokens`` (or ``max_completion_tokens``),
  ``temperature`` (0: greedy), ``seed``, ``stream`` (server-sent events, one chunk per token as it is
  drawn, ``data: [DONE]`` last), ``stream_options.include_usage``; difflens's own ``alpha`` (steered
  models) and ``beta`` (amplified). Errors in OpenAI's shape ``{"error": {"message", "type", "code"}}``:
  400 bad JSON or fields, 401 missing or wrong bearer token, 404 unknown model or route, 405, 413 a body
  over the limit, 429 with ``Retry-After`` when the generation queue is full, 500 a failed generation.
- ``GET /healthz`` — liveness and the queue length (no token needed, nothing about the run).

The explorer's routes (``difflens explore`` only): ``GET /`` (the page), ``GET /static/{file}``,
``GET /api/info``, ``POST /api/heatmap``, ``GET /fragments/{patchscope,examples,run}`` (HTML rendered by
the report's own functions), ``POST /login`` and ``POST /logout`` (the bearer token as an HttpOnly
cookie, so a browser can use a protected explorer).

The bearer token is compared with :func:`hmac.compare_digest` and never logged; there is no request log
at all (prompts must not end up in one).
"""
from __future__ import annotations

import asyncio
import hmac
import json
import time
import uuid
from typing import Any, Callable

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Route

from .service import BadRequest, ModelService, QueueFull, UnknownModel

__all__ = ["create_app", "COOKIE"]

COOKIE = "difflens_token"
OPEN_PATHS = ("/healthz", "/login", "/logout", "/static/")
CHAT_FIELDS = {"model", "messages", "max_tokens", "max_completion_tokens", "temperature", "seed", "stream",
               "stream_options", "alpha", "beta", "n", "top_p", "user", "stop", "presence_penalty",
               "frequency_penalty", "logit_bias", "response_format", "metadata", "store"}


def _error(status: int, message: str, *, code: str | None = None, headers: dict[str, str] | None = None) -> JSONResponse:
    kind = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
            413: "invalid_request_error", 429: "rate_limit_error"}.get(status, "server_error" if status >= 500
                                                                    else "invalid_request_error")
    return JSONResponse({"error": {"message": message, "type": kind, "code": code}}, status_code=status,
                        headers=headers)


class BearerAuth:
    """Pure ASGI middleware: every path but the open ones needs ``Authorization: Bearer <token>`` or
    the explorer's cookie holding it (constant-time comparison; the token is never logged)."""

    def __init__(self, app: Any, token: str | None):
        self.app = app
        self.token = token.encode() if token else None

    def ok(self, headers: dict[bytes, bytes]) -> bool:
        assert self.token is not None
        auth = headers.get(b"authorization", b"")
        if auth[:7].lower() == b"bearer " and hmac.compare_digest(auth[7:].strip(), self.token):
            return True
        for part in headers.get(b"cookie", b"").split(b";"):
            name, _, value = part.strip().partition(b"=")
            if name == COOKIE.encode() and hmac.compare_digest(value, self.token):
                return True
        return False

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http" or self.token is None or scope["path"].startswith(OPEN_PATHS):
            await self.app(scope, receive, send)
            return
        if self.ok(dict(scope.get("headers") or [])):
            await self.app(scope, receive, send)
            return
        if scope["method"] == "GET" and scope["path"] == "/":
            from .pages import login_page

            resp: Response = HTMLResponse(login_page(), status_code=401)
        else:
            resp = _error(401, "missing or wrong bearer token (Authorization: Bearer <token>)",
                          headers={"WWW-Authenticate": "Bearer"})
        await resp(scope, receive, send)


async def _json_body(request: Request, limit: int) -> Any:
    """The request body as JSON, refusing a body over ``limit`` bytes (413) before reading it all."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            if int(declared) > limit:
                raise HTTPException(413, f"request body of {int(declared)} bytes; at most {limit}")
        except ValueError:
            raise HTTPException(400, "bad Content-Length header") from None
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise HTTPException(413, f"request body over {limit} bytes")
        chunks.append(chunk)
    raw = b"".join(chunks)
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise HTTPException(400, f"invalid JSON: {e}") from None


def _chunk(cid: str, created: int, model: str, delta: dict[str, Any], finish: str | None,
           extra: dict[str, Any] | None = None) -> str:
    obj: dict[str, Any] = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                           "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
    if extra:
        obj.update(extra)
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


def _usage(done: dict[str, Any]) -> dict[str, int]:
    p, c = int(done["prompt_tokens"]), int(done["completion_tokens"])
    return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}


def _meta(done: dict[str, Any]) -> dict[str, Any]:
    """What the explorer shows under an answer (seed, temperature, α / β, timing, who generated it)."""
    keys = ("seed", "temperature", "position", "alpha", "beta", "first_token_s", "seconds", "completion_tokens",
            "backend")
    return {k: done[k] for k in keys if k in done}


def create_app(service: ModelService, *, layout: Any = None, token: str | None = None, pages: bool = True) -> Any:
    """The application over ``service``: the OpenAI-compatible routes, and with ``pages`` the explorer
    (which reads the run at ``layout`` for its Patchscope, Examples and Run views)."""

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok", "queued": service.queued(), "busy": service.running is not None})

    async def models(request: Request) -> Response:
        return JSONResponse({"object": "list", "data": service.model_cards()})

    async def chat(request: Request) -> Response:
        body = await _json_body(request, service.limits.max_body_bytes)
        if not isinstance(body, dict):
            raise HTTPException(400, "the body must be a JSON object")
        unknown = sorted(set(body) - CHAT_FIELDS)
        if unknown:
            raise HTTPException(400, f"unknown field(s): {', '.join(unknown)}")
        try:
            spec = service.resolve(body.get("model"), alpha=body.get("alpha"), beta=body.get("beta"))
            if body.get("n", 1) != 1:
                raise BadRequest("'n' must be 1")
            max_tokens = service.check_max_tokens(body.get("max_tokens", body.get("max_completion_tokens")))
            temperature = body.get("temperature", 1.0)
            if temperature is None:
                temperature = 1.0
            if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not 0 <= temperature <= 2:
                raise BadRequest("'temperature' must be a number between 0 and 2")
            seed = body.get("seed")
            if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2 ** 63):
                raise BadRequest("'seed' must be a non-negative integer")
            stream = body.get("stream", False)
            if not isinstance(stream, bool):
                raise BadRequest("'stream' must be true or false")
            opts = body.get("stream_options") or {}
            if not isinstance(opts, dict):
                raise BadRequest("'stream_options' must be an object")
            ids = service.prompt_ids(body.get("messages"))
        except UnknownModel as e:
            return _error(404, str(e), code="model_not_found")
        except BadRequest as e:
            return _error(400, str(e))
        job = service.chat_job(spec, ids, max_tokens=max_tokens, temperature=float(temperature), seed=seed,
                               loop=asyncio.get_running_loop())
        try:
            service.submit(job)
        except QueueFull as e:
            return _error(429, str(e), headers={"Retry-After": str(e.retry_after)})
        cid, created = f"chatcmpl-{uuid.uuid4().hex[:16]}", int(time.time())
        if not stream:
            text: list[str] = []
            try:
                async for kind, payload in job.stream():
                    if kind == "token":
                        text.append(payload[0])
                    elif kind == "error":
                        return _error(500, f"generation failed: {payload}")
                    else:
                        done = payload
            finally:
                job.cancel()  # a client that went away stops its generation
            finish = "length" if done["finish_reason"] == "length" else "stop"
            return JSONResponse({"id": cid, "object": "chat.completion", "created": created, "model": spec.name,
                                 "choices": [{"index": 0, "finish_reason": finish,
                                              "message": {"role": "assistant", "content": "".join(text)}}],
                                 "usage": _usage(done), "difflens": _meta(done)})

        async def events() -> Any:
            try:
                yield _chunk(cid, created, spec.name, {"role": "assistant", "content": ""}, None)
                async for kind, payload in job.stream():
                    if kind == "token":
                        yield _chunk(cid, created, spec.name, {"content": payload[0]}, None)
                    elif kind == "error":
                        err = {"error": {"message": f"generation failed: {payload}", "type": "server_error",
                                         "code": None}}
                        yield f"data: {json.dumps(err)}\n\n"
                    else:
                        finish = "length" if payload["finish_reason"] == "length" else "stop"
                        yield _chunk(cid, created, spec.name, {}, finish, {"difflens": _meta(payload)})
                        if opts.get("include_usage"):
                            yield (f"data: {json.dumps({'id': cid, 'object': 'chat.completion.chunk', 'created': created, 'model': spec.name, 'choices': [], 'usage': _usage(payload)})}\n\n")
                yield "data: [DONE]\n\n"
            finally:
                job.cancel()  # the client disconnected (or the stream ended): stop generating

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    routes = [Route("/healthz", healthz), Route("/v1/models", models),
              Route("/v1/chat/completions", chat, methods=["POST"])]

    if pages:
        from . import pages as P

        async def index(request: Request) -> Response:
            return HTMLResponse(P.index_page(service, layout))

        async def static(request: Request) -> Response:
            name = request.path_params["name"]
            body, media = P.static_file(name)
            if body is None:
                raise HTTPException(404, f"no static file {name!r}")
            return Response(body, media_type=media, headers={"Cache-Control": "no-cache"})

        async def info(request: Request) -> Response:
            return JSONResponse(P.run_info(service, layout))

        async def heatmap(request: Request) -> Response:
            body = await _json_body(request, service.limits.max_body_bytes)
            if not isinstance(body, dict):
                raise HTTPException(400, "the body must be a JSON object")
            try:
                top = body.get("top", 5)
                if isinstance(top, bool) or not isinstance(top, int) or not 0 <= top <= 20:
                    raise BadRequest("'top' must be an integer between 0 and 20")
                job = service.heatmap_job(body.get("text"), loop=asyncio.get_running_loop(), top=top)
            except BadRequest as e:
                return _error(400, str(e))
            try:
                service.submit(job)
            except QueueFull as e:
                return _error(429, str(e), headers={"Retry-After": str(e.retry_after)})
            try:
                async for kind, payload in job.stream():
                    if kind == "error":
                        return _error(500, f"heat map failed: {payload}")
                    if kind == "done":
                        return JSONResponse(payload)
            finally:
                job.cancel()
            return _error(500, "heat map ended without a result")

        async def fragment(request: Request) -> Response:
            name = request.path_params["name"]
            render = P.FRAGMENTS.get(name)
            if render is None:
                raise HTTPException(404, f"no view {name!r}")
            html = await asyncio.to_thread(render, layout, service, dict(request.query_params))
            return HTMLResponse(html)

        async def login(request: Request) -> Response:
            from urllib.parse import parse_qs

            raw = await request.body()  # a urlencoded form (no multipart parser needed for one field)
            given = (parse_qs(raw[:8192].decode("utf-8", "replace")).get("token") or [""])[0]
            resp = RedirectResponse("/", status_code=303)
            if token is not None and hmac.compare_digest(given.encode(), token.encode()):
                resp.set_cookie(COOKIE, token, httponly=True, samesite="strict")
            return resp

        async def logout(request: Request) -> Response:
            resp = RedirectResponse("/", status_code=303)
            resp.delete_cookie(COOKIE)
            return resp

        routes += [Route("/", index), Route("/static/{name}", static), Route("/api/info", info),
                   Route("/api/heatmap", heatmap, methods=["POST"]), Route("/fragments/{name}", fragment),
                   Route("/login", login, methods=["POST"]), Route("/logout", logout, methods=["POST"])]

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        msg = exc.detail if exc.status_code != 404 or exc.detail != "Not Found" else f"no route {request.url.path}"
        return _error(exc.status_code, str(msg), headers=getattr(exc, "headers", None))

    async def server_error(request: Request, exc: Exception) -> Response:
        return _error(500, f"internal error: {type(exc).__name__}")

    app = Starlette(routes=routes, exception_handlers={HTTPException: http_error, Exception: server_error})
    app.state.service = service
    return BearerAuth(app, token)
