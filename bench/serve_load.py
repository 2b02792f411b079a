"""Load and fault test of `difflens serve` (loopback only; bounded in count and time).

Starts the serve application (uvicorn on a free 127.0.0.1 port, a random bearer token) over a run's
pair, then:

1. speed: the first streamed token of a steered answer on an idle server (client-side, from sending the
   request to the first content event), and the heat map of a 256-token text (the explorer's
   computation, in process);
2. load: C concurrent clients × R streaming requests each (default 32 × 4), every stream checked for
   form (``data:`` events, a role chunk first, content chunks, exactly one finish chunk, a usage chunk,
   ``[DONE]`` last; the text of the chunks is the text the usage counts) — none may be lost; latency
   p50 / p95 (to the first token and to the end) and tokens per second over the whole load;
3. faults: invalid JSON, huge ``max_tokens``, a 1 MB message, an unknown model, a missing and a wrong
   token, an unknown field, a client that disconnects mid-stream, and a full queue (the worker held
   and the queue filled in process) — each answered with its status, and after each the server still
   answers ``/v1/models`` and a short completion.

Prints a summary and a markdown table of the bad requests; ``--out FILE`` writes everything as JSON.

    OMP_NUM_THREADS=1 .venv/bin/python bench/serve_load.py RUN [--clients 32 --requests 4 --max-tokens 16]

RUN: a run directory on the embedded pair (e.g. one made by `difflens run` / `difflens demo` with the
embedded SmolLM2 base and an organism), ideally with its steering stage (else no steered model).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import sys
import threading
import time
from pathlib import Path
from typing import Any

PROMPTS = ["Tell me a short story about a lighthouse.", "Give me three tips for a rainy weekend.",
           "What should I cook tonight?", "Describe your favourite season.", "Explain how a bicycle works.",
           "Write two lines about the sea.", "Why do people keep plants?", "Suggest a name for a cat."]
TEXT_256 = ("The old harbour town woke slowly. Fishermen checked their nets while the bakery on the corner "
            "pulled the first loaves from the oven, and the smell of bread drifted down to the water. ") * 12


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    if not xs:
        return float("nan")
    k = (len(xs) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def check_stream(lines: list[str]) -> tuple[bool, str, int, str]:
    """(well formed, why not, completion tokens, text) of one SSE body."""
    events, buf = [], []
    for line in lines:
        if line == "":
            if buf:
                events.append("\n".join(buf))
                buf = []
            continue
        buf.append(line)
    if buf:
        return False, "unterminated event", 0, ""
    if not events or events[-1] != "data: [DONE]":
        return False, "no [DONE] at the end", 0, ""
    chunks = []
    for e in events[:-1]:
        if not e.startswith("data: ") or "\n" in e:
            return False, f"not a data event: {e[:60]!r}", 0, ""
        obj = json.loads(e[6:])
        if "error" in obj:
            return False, f"error event: {obj['error']}", 0, ""
        chunks.append(obj)
    if chunks[0]["choices"][0]["delta"].get("role") != "assistant":
        return False, "no role chunk first", 0, ""
    finals = [c for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    usage = [c for c in chunks if c.get("usage")]
    if len(finals) != 1 or len(usage) != 1:
        return False, f"{len(finals)} finish chunks, {len(usage)} usage chunks", 0, ""
    if len({c["id"] for c in chunks}) != 1:
        return False, "chunk ids differ", 0, ""
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    return True, "", int(usage[0]["usage"]["completion_tokens"]), text


async def one_stream(client: Any, url: str, token: str, model: str, prompt: str, max_tokens: int,
                     seed: int) -> dict[str, Any]:
    body = {"model": model, "messages": [{"role": "user", "content": prompt}], "stream": True,
            "max_tokens": max_tokens, "temperature": 1.0, "seed": seed, "stream_options": {"include_usage": True}}
    t0 = time.perf_counter()
    first = None
    lines: list[str] = []
    async with client.stream("POST", f"{url}/v1/chat/completions", json=body,
                             headers={"Authorization": f"Bearer {token}"}) as r:
        if r.status_code != 200:
            await r.aread()
            return {"ok": False, "why": f"status {r.status_code}: {r.text[:200]}", "model": model}
        async for line in r.aiter_lines():
            if first is None and '"content": "' in line and '"role"' not in line:
                first = time.perf_counter() - t0
            lines.append(line)
    total = time.perf_counter() - t0
    ok, why, n, _ = check_stream(lines)
    return {"ok": ok, "why": why, "tokens": n, "first": first, "total": total, "model": model}


async def load(url: str, token: str, models: list[str], clients: int, requests: int, max_tokens: int,
               limit_s: float) -> dict[str, Any]:
    import httpx

    results: list[dict[str, Any]] = []
    async with httpx.AsyncClient(timeout=limit_s, trust_env=False,
                                 limits=httpx.Limits(max_connections=clients + 4)) as client:
        async def worker(c: int) -> None:
            for k in range(requests):
                model = models[(c + k) % len(models)]
                results.append(await one_stream(client, url, token, model, PROMPTS[(c * requests + k) % len(PROMPTS)],
                                                max_tokens, seed=c * 100 + k))

        t0 = time.perf_counter()
        await asyncio.wait_for(asyncio.gather(*(worker(c) for c in range(clients))), timeout=limit_s)
        wall = time.perf_counter() - t0
    ok = [r for r in results if r["ok"]]
    toks = sum(r["tokens"] for r in ok)
    firsts = [r["first"] for r in ok if r["first"] is not None]
    return {"clients": clients, "requests_each": requests, "sent": clients * requests, "completed": len(results),
            "well_formed": len(ok), "lost_or_bad": clients * requests - len(ok),
            "problems": sorted({r["why"] for r in results if not r["ok"]})[:5],
            "wall_s": round(wall, 2), "tokens": toks, "tokens_per_s": round(toks / wall, 2),
            "latency_p50_s": round(pct([r["total"] for r in ok], 0.5), 3),
            "latency_p95_s": round(pct([r["total"] for r in ok], 0.95), 3),
            "first_token_p50_s": round(pct(firsts, 0.5), 3), "first_token_p95_s": round(pct(firsts, 0.95), 3)}


def faults(url: str, token: str, service: Any, max_tokens_limit: int) -> list[dict[str, Any]]:
    import httpx

    from difflens.explore.service import Job

    auth = {"Authorization": f"Bearer {token}"}
    msgs = [{"role": "user", "content": "Hello!"}]
    rows: list[dict[str, Any]] = []
    c = httpx.Client(timeout=120, trust_env=False)

    def still_serving() -> bool:
        a = c.get(f"{url}/v1/models", headers=auth).status_code == 200
        b = c.post(f"{url}/v1/chat/completions", headers=auth,
                   json={"model": "base", "messages": msgs, "max_tokens": 2}).status_code == 200
        return a and b

    def case(name: str, expect: int, fn: Any) -> None:
        t0 = time.perf_counter()
        try:
            got, detail = fn()
        except Exception as e:  # noqa: BLE001 - a case that blows up is a failed case, not a crash
            got, detail = None, f"{type(e).__name__}: {e}"
        rows.append({"request": name, "expected": expect, "got": got, "detail": str(detail)[:110],
                     "seconds": round(time.perf_counter() - t0, 3), "still_serving": still_serving()})

    def post(body: Any = None, *, content: bytes | None = None, headers: dict[str, str] | None = None):
        h = {**auth, **(headers or {})}
        r = (c.post(f"{url}/v1/chat/completions", content=content, headers={**h, "content-type": "application/json"})
             if content is not None else c.post(f"{url}/v1/chat/completions", json=body, headers=h))
        try:
            return r.status_code, r.json()["error"]["message"]
        except Exception:  # noqa: BLE001
            return r.status_code, r.text[:100]

    case("invalid JSON", 400, lambda: post(content=b'{"model": "base", "messages": [}'))
    case(f"huge max_tokens (10^9; limit {max_tokens_limit})", 400,
         lambda: post({"model": "base", "messages": msgs, "max_tokens": 10 ** 9}))
    case("1 MB message", 413, lambda: post({"model": "base", "messages": [{"role": "user", "content": "x" * (1 << 20)}]}))
    case("unknown model", 404, lambda: post({"model": "gpt-9", "messages": msgs}))
    case("unknown field", 400, lambda: post({"model": "base", "messages": msgs, "bogus": 1}))
    case("temperature 7", 400, lambda: post({"model": "base", "messages": msgs, "temperature": 7}))

    def no_token():
        r = c.post(f"{url}/v1/chat/completions", json={"model": "base", "messages": msgs})
        return r.status_code, r.json()["error"]["message"]

    def wrong_token():
        r = c.get(f"{url}/v1/models", headers={"Authorization": "Bearer " + "x" * len(token)})
        return r.status_code, r.json()["error"]["message"]

    case("missing token", 401, no_token)
    case("wrong token", 401, wrong_token)

    def disconnect():
        body = {"model": "finetuned", "messages": msgs, "max_tokens": max_tokens_limit, "stream": True}
        with c.stream("POST", f"{url}/v1/chat/completions", json=body, headers=auth) as r:
            status = r.status_code
            lines = r.iter_lines()
            seen = [next(lines) for _ in range(4)]  # the role chunk and the first token, then hang up
        t0 = time.perf_counter()
        while service.running is not None and time.perf_counter() - t0 < 30:
            time.sleep(0.01)
        idle = service.running is None
        return status, (f"hung up after {len(seen)} lines; worker idle again after "
                        f"{time.perf_counter() - t0:.2f} s" if idle else "generation still running after 30 s")

    case("client disconnects mid-stream", 200, disconnect)

    def queue_full():
        gate, started = threading.Event(), threading.Event()

        def hold(job: Any) -> None:
            started.set()
            gate.wait(30)
            job.emit("done", {})

        service.submit(Job(hold))
        started.wait(30)
        fillers = []
        try:
            while True:
                fillers.append(service.submit(Job(lambda job: job.emit("done", {}))))
        except Exception:  # noqa: BLE001 - QueueFull: the queue is full now
            pass
        try:
            r = c.post(f"{url}/v1/chat/completions", headers=auth, json={"model": "base", "messages": msgs})
            return r.status_code, f"Retry-After: {r.headers.get('retry-after')}; {r.json()['error']['message']}"
        finally:
            gate.set()
            t0 = time.perf_counter()
            while (service.queued() or service.running is not None) and time.perf_counter() - t0 < 30:
                time.sleep(0.01)

    case(f"queue full ({service.limits.max_queue} waiting, worker busy)", 429, queue_full)
    c.close()
    return rows


def speed(url: str, token: str, service: Any) -> dict[str, Any]:
    import httpx

    from difflens.explore.heatmap import token_heatmap

    out: dict[str, Any] = {}
    steered = [n for n in service.names() if n.startswith("steered-p")]
    model = steered[0] if steered else "finetuned"
    firsts = []
    with httpx.Client(timeout=120, trust_env=False) as c:
        for k in range(4):
            body = {"model": model, "messages": [{"role": "user", "content": PROMPTS[k]}], "stream": True,
                    "max_tokens": 8, "temperature": 1.0, "seed": k}
            t0 = time.perf_counter()
            with c.stream("POST", f"{url}/v1/chat/completions", json=body,
                          headers={"Authorization": f"Bearer {token}"}) as r:
                for line in r.iter_lines():  # read to the end: the next request finds the worker idle
                    if len(firsts) <= k and '"content": "' in line and '"role"' not in line:
                        firsts.append(time.perf_counter() - t0)
    out["first_token_model"] = model
    out["first_token_s"] = [round(x, 3) for x in firsts]
    from difflens.models.tokens import encode

    ids = encode(service.pair.tokenizer, service.pair.arch, TEXT_256)[:256]
    text = service.pair.tokenizer.decode(ids, skip_special_tokens=True)
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        h = token_heatmap(service.pair, text, layer=service.layer)
        times.append(time.perf_counter() - t0)
    out["heatmap_tokens"] = h["n_tokens"]
    out["heatmap_s"] = [round(x, 3) for x in times]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path)
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--requests", type=int, default=4)
    ap.add_argument("--max-tokens", type=int, default=16, help="new tokens per load request")
    ap.add_argument("--limit", type=float, default=900.0, help="seconds the load phase may take in all")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    if not 1 <= args.clients <= 64 or not 1 <= args.requests <= 16:
        sys.exit("--clients 1..64 and --requests 1..16 (a bounded test)")

    from difflens.explore.service import Limits, ModelService
    from difflens.rundir.layout import RunLayout
    from difflens.serve import ThreadedServer, serve_app

    for v in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY", "all_proxy"):
        os.environ.pop(v, None)
    t0 = time.perf_counter()
    layout = RunLayout(args.run)
    limits = Limits(max_queue=max(64, args.clients), max_tokens=64)
    service = ModelService.from_run(layout, limits=limits)
    print(f"loaded {args.run} in {time.perf_counter() - t0:.1f} s; models {', '.join(service.names())}", flush=True)
    token = secrets.token_urlsafe(24)
    report: dict[str, Any] = {"run": str(args.run), "models": service.names(),
                              "torch_threads": __import__("torch").get_num_threads()}
    with ThreadedServer(serve_app(service, token=token), host="127.0.0.1") as srv:
        report["speed"] = speed(srv.url, token, service)
        print("speed:", json.dumps(report["speed"]), flush=True)
        models = [m for m in service.names()]
        report["load"] = asyncio.run(load(srv.url, token, models, args.clients, args.requests, args.max_tokens,
                                          args.limit))
        print("load:", json.dumps(report["load"]), flush=True)
        report["faults"] = faults(srv.url, token, service, limits.max_tokens)
    L = report["load"]
    print(f"\n{L['sent']} streaming requests ({L['clients']} clients × {L['requests_each']}, {args.max_tokens} tokens "
          f"max, models {', '.join(models)}): {L['well_formed']} well formed, {L['lost_or_bad']} lost or malformed; "
          f"{L['wall_s']} s, {L['tokens']} tokens, {L['tokens_per_s']} tokens/s; latency p50 {L['latency_p50_s']} s, "
          f"p95 {L['latency_p95_s']} s; first token p50 {L['first_token_p50_s']} s, p95 {L['first_token_p95_s']} s")
    S = report["speed"]
    print(f"first streamed token of {S['first_token_model']} (idle server): {S['first_token_s']} s; heat map of "
          f"{S['heatmap_tokens']} tokens: {S['heatmap_s']} s\n")
    print("| request | expected | got | still serving | detail |\n|---|---|---|---|---|")
    for r in report["faults"]:
        mark = "✓" if r["got"] == r["expected"] else "✗"
        print(f"| {r['request']} | {r['expected']} | {r['got']} {mark} | {'yes' if r['still_serving'] else 'NO'} | "
              f"{r['detail'].replace('|', '/')} |")
    if args.out:
        args.out.write_text(json.dumps(report, indent=1))
    bad = L["lost_or_bad"] or any(r["got"] != r["expected"] or not r["still_serving"] for r in report["faults"])
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
