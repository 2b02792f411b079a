"""``difflens explore`` and ``difflens serve``: one ASGI application over a run's model pair.

- :mod:`.service` — the pair as named chat models (base, finetuned, steered-p{j}, amplified) generating
  token by token on one worker thread behind a bounded queue, and per-token heat maps of any text;
- :mod:`.heatmap` — the heat map, from the kl method's own per-token computation;
- :mod:`.app` — the Starlette application: OpenAI-compatible routes (streamed as server-sent events, one
  event per token), and the explorer's page, views and APIs;
- :mod:`.pages` — the page, and the run's views rendered by the report's own functions;
- :mod:`.server` — uvicorn, in the foreground (the commands) or on a thread (tests, benchmarks).

Starlette (with uvicorn) rather than FastAPI: the routes validate their own fields and answer every
error in OpenAI's shape with OpenAI's status codes (400 for a bad field, not FastAPI's 422), stream
with Starlette's own StreamingResponse, and need none of FastAPI's schema machinery; Starlette is
what FastAPI is built on, maintained by the same people, with one small dependency (anyio).
"""
from __future__ import annotations

from .app import create_app
from .server import ThreadedServer, serve_forever
from .service import Limits, ModelService

__all__ = ["create_app", "ModelService", "Limits", "ThreadedServer", "serve_forever"]
