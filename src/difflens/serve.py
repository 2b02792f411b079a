"""``difflens serve RUN``: an OpenAI-compatible HTTP endpoint over a run's models.

Models ``base``, ``finetuned``, ``steered-p{j}`` (the finetuned model steered with δ̄_j at the run's
threshold α_j, or at the request's ``alpha``) and ``amplified`` (logit-difference amplification at the
run's β, or the request's ``beta``). Routes ``GET /v1/models`` and ``POST /v1/chat/completions``
(multi-turn messages, ``temperature``, ``max_tokens``, ``seed``, ``stream``: server-sent events, one per
token as it is drawn). Any OpenAI-compatible client works against it — the agent's ``--models-url``, a
small served model as the agent, a person with curl.

It is the explorer's application (:mod:`difflens.explore`) without the explorer's pages: Starlette
served by uvicorn (the standard library's ``http.server`` of earlier versions is retired). Generation
runs on one worker thread behind a bounded queue (429 with Retry-After when full); limits on
``max_tokens``, the body, message size and count; loopback by default; with a token (read by the CLI
from an environment variable, never logged) every route but ``/healthz`` needs
``Authorization: Bearer <token>``.
"""
from __future__ import annotations

from typing import Any

from .explore.app import create_app
from .explore.server import ThreadedServer, serve_forever
from .explore.service import Limits, ModelService

__all__ = ["ModelService", "Limits", "serve_app", "ThreadedServer", "serve_forever"]


def serve_app(service: ModelService, *, token: str | None = None) -> Any:
    """The ASGI application of ``difflens serve``: the OpenAI-compatible routes over ``service``."""
    return create_app(service, token=token, pages=False)
