"""The model side of ``difflens serve`` and ``difflens explore``: a run's pair as named chat models,
generating token by token on one worker thread behind a bounded queue.

Models (the names ``difflens serve`` has always used, plus one):

- ``base`` and ``finetuned``: the pair's two models, unsteered;
- ``steered-p{j}``: the finetuned model steered with ``α · η_ft · δ̂_j`` at layer ℓ (the steering stage's
  hook, :func:`difflens.adl.steering.steering_hook`), α the run's threshold for position j unless the
  request gives ``alpha``;
- ``amplified``: sampling from ``l_ft + β·(l_ft − l_base)`` with both models stepping on their own KV
  cache (:mod:`difflens.methods.amplify`'s per-model stream), β the run's chosen β when it has the
  amplification method, else 1, unless the request gives ``beta``.

Every generation and every heat map runs on ONE worker thread (the models are used by one job at a
time); requests wait in a bounded queue of ``Limits.max_queue`` jobs, and :meth:`ModelService.submit`
raises :class:`QueueFull` (with a Retry-After estimate) when it is full. A job streams events to the
asyncio loop of its request (:class:`Job`); a cancelled job (its client went away) stops at the next
token, or is skipped if it had not started. A job that raises reports an ``error`` event: the worker,
and so the server, carries on.

Completions that wait together are batched: when the worker takes a chat job, the queued chat jobs
of its group (one model side, the finetuned side mixing unsteered and steered rows; or every amplified
job) join it, up to ``Limits.max_batch`` and wherever they wait (the others keep their order), in one
left-padded batch on one KV cache. Each row has its own steering vector (zero for unsteered rows) or
β, and its own generator seeded by its request's seed, so a row's draws do not depend on who shares
its batch (padding changes the logits only by rounding). A job alone runs as below, unbatched.

With a vLLM backend (``difflens serve/explore --backend vllm``, :class:`~difflens.backends.vllm.VLLMStreams`)
base, finetuned and steered completions stream through vLLM's engines instead: the worker thread adds
each such job as an engine request and steps the engines, and jobs that arrive meanwhile join the
running batch (up to ``Limits.max_batch``), so concurrent requests share every forward pass. A job that
cannot join (amplified, a heat map, a second steering vector on a ``worker``-steered engine) waits at
the head of the line until the batch drains. vLLM seeds each request itself: a served answer there
has the HF path's distribution, and at temperature 0 its tokens up to kernel differences.

Sampling on the HF path follows the steering stage's generations: ``torch.manual_seed(seed)`` before the call,
``do_sample`` with ``top_k=0, top_p=1`` at the temperature (greedy at temperature 0) — so a served
answer at a seed is the answer ``model.generate`` gives there, and an amplified one the answer of
:func:`difflens.methods.amplify.amplified_generate` for the same prompt and seed.
"""
from __future__ import annotations

import asyncio
import math
import queue
import random
import threading
import time
from collections import deque
from typing import Any, Callable, Iterator, Sequence

import torch

from ..errors import RunDirError
from ..methods.amplify import GenerationCount, _Stream
from ..models.decoding import eos_ids as _eos_ids
from ..models.tokens import pad_id, pad_left
from .jobs import (ALPHA_MAX, AMPLIFIED, BETA_MAX, DEFAULT_BETA, BadRequest, Job, Limits, ModelSpec, QueueFull,
                   UnknownModel, _ChatEmitter, _message_text, _number)

__all__ = ["Limits", "ModelService", "ModelSpec", "Job", "QueueFull", "BadRequest", "UnknownModel",
           "AMPLIFIED", "DEFAULT_BETA"]

class ModelService:
    """A run's pair as named chat models (see the module docstring)."""

    def __init__(self, pair: Any, *, layer: int, eta: float = 1.0,
                 steering: dict[int, tuple[torch.Tensor, float]] | None = None, dataset: str | None = None,
                 beta: float | None = None, limits: Limits | None = None, notes: dict[str, str] | None = None,
                 vllm: Any = None):
        self.pair = pair
        self.vllm = vllm  # a VLLMBackend: base, finetuned and steered completions stream through its engines
        self.layer = int(layer)
        self.eta = float(eta)
        self.steering = dict(steering or {})  # j → (δ̄_j, α_j)
        self.dataset = dataset
        self.run_beta = beta  # the run's chosen β (None: the run has no amplification result)
        self.limits = limits or Limits()
        self.notes = dict(notes or {})  # stage → what is missing and the command that makes it
        self._queue: queue.Queue[Job] = queue.Queue(maxsize=self.limits.max_queue)
        self._held: deque[Job] = deque()  # taken from the queue by the vLLM batcher but not admitted: next up
        self._worker: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._seconds: list[float] = []  # recent job durations (Retry-After estimate)
        self.running: Job | None = None

    # -- building -------------------------------------------------------------------------------
    @classmethod
    def from_run(cls, layout: Any, *, dataset: str | None = None, layer: int | None = None, pair: Any = None,
                 pair_loader: Callable[[], Any] | None = None, limits: Limits | None = None,
                 vllm: Any = None) -> "ModelService":
        """The service of a run directory: its pair (``pair``, else ``pair_loader()``, else
        :func:`~difflens.models.pair.pair_from_run`), δ̄ and thresholds of its steering stage on
        ``dataset`` × ``layer`` (default: the first collected), the β of its amplification result. A
        stage that is missing leaves a note naming the command that makes it. ``vllm``: a
        :class:`~difflens.backends.vllm.VLLMBackend` for base, finetuned and steered completions."""
        from ..files import read_json
        from ..rundir import artifacts as A

        notes: dict[str, str] = {}
        manifest = read_json(layout.manifest) if layout.manifest.exists() else None
        if manifest is None:
            from ..report.gather import _methods_pair

            models = _methods_pair(layout)
            if models is None:
                raise RunDirError(f"{layout.root} is not a difflens run (no manifest.json and no method results).")
            if pair is None and pair_loader is None:
                from ..models.pair import load_pair

                pair = load_pair(models["base"]["spec"], models["finetuned"]["spec"])
        if pair is None:
            if pair_loader is not None:
                pair = pair_loader()
            else:
                from ..models.pair import pair_from_run

                pair = pair_from_run(layout)
        ds = dataset or (manifest["datasets"][0]["name"] if manifest and manifest.get("datasets") else None)
        if layer is not None:
            li = int(layer)
        elif manifest and manifest.get("layers"):
            li = int(manifest["layers"][0]["absolute"])
        else:
            li = pair.arch.resolve_layer(0.5)
        steering: dict[int, tuple[torch.Tensor, float]] = {}
        eta = 1.0
        if ds is None:
            notes["steer"] = f"no collection yet: run `difflens collect ... --out {layout.root}`"
        else:
            path = layout.steering(ds, li)
            if path.exists():
                from ..adl.collect import load_collected

                res = A.load(A.SteeringResult, path)
                c = load_collected(layout, ds, li)
                eta = float(res.eta_ft)
                steering = {t.position: (c.delta[t.position], float(t.alpha)) for t in res.thresholds}
            else:
                notes["steer"] = f"no steering yet: run `difflens steer {layout.root}`"
        beta = None
        for d in ([ds] if ds else []) + ["chat"] + _method_datasets(layout):
            p = layout.method_result(d, "amplify")
            if p.exists():
                try:
                    beta = float(read_json(p).get("chosen_beta"))
                except (RunDirError, TypeError, ValueError):
                    beta = None
                break
        if beta is None:
            notes["amplify"] = (f"no amplification result: β starts at {DEFAULT_BETA:g} (run `difflens diff "
                                f"{layout.root} --methods amplify` for the graded choice)")
        return cls(pair, layer=li, eta=eta, steering=steering, dataset=ds, beta=beta, limits=limits, notes=notes,
                   vllm=vllm)

    # -- models ---------------------------------------------------------------------------------
    def names(self) -> list[str]:
        return ["base", "finetuned", *[f"steered-p{j}" for j in sorted(self.steering)], AMPLIFIED]

    @property
    def beta(self) -> float:
        return self.run_beta if self.run_beta is not None else DEFAULT_BETA

    def model_cards(self) -> list[dict[str, Any]]:
        """``/v1/models`` entries, each with what it is under ``difflens``."""
        out = [{"id": "base", "object": "model", "owned_by": "difflens", "difflens": {"kind": "base"}},
               {"id": "finetuned", "object": "model", "owned_by": "difflens", "difflens": {"kind": "finetuned"}}]
        for j in sorted(self.steering):
            out.append({"id": f"steered-p{j}", "object": "model", "owned_by": "difflens",
                        "difflens": {"kind": "steered", "position": j, "alpha": self.steering[j][1],
                                     "layer": self.layer, "eta": self.eta}})
        out.append({"id": AMPLIFIED, "object": "model", "owned_by": "difflens",
                    "difflens": {"kind": "amplified", "beta": self.beta, "beta_from_run": self.run_beta is not None}})
        return out

    def resolve(self, model: Any, *, alpha: Any = None, beta: Any = None) -> ModelSpec:
        """The model a request names, with its α or β (UnknownModel, BadRequest)."""
        if not isinstance(model, str) or not model:
            raise BadRequest("'model' must be a model name (GET /v1/models lists them)")
        if model not in self.names():
            raise UnknownModel(f"unknown model {model!r}; available: {', '.join(self.names())}")
        if alpha is not None and not model.startswith("steered-p"):
            raise BadRequest(f"'alpha' applies to the steered models, not {model!r}")
        if beta is not None and model != AMPLIFIED:
            raise BadRequest(f"'beta' applies to the {AMPLIFIED!r} model, not {model!r}")
        if model == "base":
            return ModelSpec("base", "base")
        if model == "finetuned":
            return ModelSpec("finetuned", "ft")
        if model == AMPLIFIED:
            b = self.beta if beta is None else _number(beta, "beta", 0.0, BETA_MAX)
            return ModelSpec(AMPLIFIED, "ft", beta=b)
        j = int(model.split("steered-p", 1)[1])
        a = self.steering[j][1] if alpha is None else _number(alpha, "alpha", -ALPHA_MAX, ALPHA_MAX)
        return ModelSpec(model, "ft", position=j, alpha=a)

    def prompt_ids(self, messages: Any) -> list[int]:
        """The conversation's token ids (chat template, the architecture's BOS policy), after checking
        the messages against the limits (BadRequest)."""
        from ..data.chat import render_chat
        from ..models.tokens import rendered_chat_ids

        lim = self.limits
        if not isinstance(messages, list) or not messages:
            raise BadRequest("'messages' must be a non-empty list")
        if len(messages) > lim.max_messages:
            raise BadRequest(f"'messages' has {len(messages)} messages; at most {lim.max_messages}")
        msgs = []
        for i, m in enumerate(messages):
            if not isinstance(m, dict):
                raise BadRequest(f"messages[{i}] must be an object with 'role' and 'content'")
            role = m.get("role", "user")
            if role not in ("system", "user", "assistant", "developer"):
                raise BadRequest(f"messages[{i}].role must be system, user or assistant, not {role!r}")
            text = _message_text(m.get("content"))
            if len(text) > lim.max_message_chars:
                raise BadRequest(f"messages[{i}] has {len(text)} characters; at most {lim.max_message_chars}")
            msgs.append({"role": "system" if role == "developer" else role, "content": text})
        tok = self.pair.tokenizer
        try:
            text = render_chat(tok, msgs, add_generation_prompt=True)
        except Exception as e:  # noqa: BLE001 - e.g. a template that refuses a system message
            raise BadRequest(f"the chat template refused these messages: {type(e).__name__}: {e}") from e
        ids = rendered_chat_ids(tok, self.pair.arch, text)
        if len(ids) > lim.max_prompt_tokens:
            raise BadRequest(f"the conversation is {len(ids)} tokens; at most {lim.max_prompt_tokens}")
        return ids

    def check_max_tokens(self, value: Any) -> int:
        if value is None:
            return min(self.limits.default_max_tokens, self.limits.max_tokens)
        if isinstance(value, bool) or not isinstance(value, int):
            raise BadRequest("'max_tokens' must be an integer")
        if not 1 <= value <= self.limits.max_tokens:
            raise BadRequest(f"'max_tokens' must be between 1 and {self.limits.max_tokens}, got {value}")
        return value

    # -- the worker -----------------------------------------------------------------------------
    def submit(self, job: Job) -> Job:
        """Queue ``job`` for the worker thread; QueueFull when ``max_queue`` jobs already wait."""
        self._ensure_worker()
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            raise QueueFull(self.retry_after()) from None
        return job

    def queued(self) -> int:
        return self._queue.qsize() + len(self._held)

    def retry_after(self) -> int:
        """Seconds after which a place in the queue is likely free: it frees when the running job ends,
        so twice the mean recent job time (at least 1 s, at most 120 s)."""
        recent = self._seconds[-20:]
        per = sum(recent) / len(recent) if recent else 1.0
        return int(min(120, max(1, math.ceil(2 * per))))

    def _ensure_worker(self) -> None:
        with self._start_lock:
            if self._worker is None or not self._worker.is_alive():
                self._worker = threading.Thread(target=self._work, name="difflens-models", daemon=True)
                self._worker.start()

    def _next(self) -> Job:
        return self._held.popleft() if self._held else self._queue.get()

    def _work(self) -> None:
        while True:
            job = self._next()
            if job.cancelled.is_set():
                continue
            self.running = job
            t0 = time.perf_counter()
            try:
                if self._on_vllm(job):
                    self._vllm_batch(job)
                elif companions := (self._gather(job) if self._batchable(job) else []):
                    self._hf_batch([job] + companions)
                else:
                    job.work(job)
            except Exception as e:  # noqa: BLE001 - a failed job answers its request; the worker goes on
                job.emit("error", f"{type(e).__name__}: {e}")
            finally:
                self.running = None
                self._seconds = self._seconds[-99:] + [time.perf_counter() - t0]

    def steering_vector(self, spec: ModelSpec) -> torch.Tensor | None:
        """``α · η · δ̂_j`` of a steered model ([1, d] float32), None for the others — the one
        vector the HF path, its batches and the vLLM path all add at layer ℓ."""
        if spec.position is None:
            return None
        from ..adl.steering import steering_vectors

        delta, _ = self.steering[spec.position]
        return steering_vectors(delta, [float(spec.alpha or 0.0)], self.eta)

    # -- HF batches (on the worker thread) ------------------------------------------------------
    def _group(self, job: Job) -> str | None:
        """Which HF batch a job may join (None: it runs alone): amplified completions batch together
        (each row its own β), the others by side (the finetuned side mixes unsteered and steered rows,
        each with its own vector) unless they stream through vLLM."""
        if job.chat is None:
            return None
        if job.chat.spec.beta is not None:
            return AMPLIFIED
        return None if self.vllm is not None else job.chat.spec.side

    def _batchable(self, job: Job) -> bool:
        return self._group(job) is not None

    def _gather(self, first: Job) -> list[Job]:
        """The queued jobs that may join ``first``'s batch: chat jobs of its group, wherever they
        wait in the line (at most ``Limits.max_batch`` in all; the others keep their places, so the
        next batch starts with the oldest of them). They are taken from the queue."""
        group = self._group(first)
        out: list[Job] = []
        if self._held:
            return out
        with self._queue.mutex:
            waiting = self._queue.queue
            keep = []
            for job in list(waiting):
                if len(out) + 1 < self.limits.max_batch and not job.cancelled.is_set() and \
                        self._group(job) == group:
                    out.append(job)
                else:
                    keep.append(job)
            if out:
                waiting.clear()
                waiting.extend(keep)
                self._queue.not_full.notify_all()
        return out

    def _hf_batch(self, jobs: list[Job]) -> None:
        """Several completions on one side of the HF pair in one batch: left-padded conversations on
        one KV cache, each row steered by its own vector (zero for unsteered rows), each row drawn with
        its own generator seeded by its request's seed (so its answer does not depend on who shares the
        batch, up to padding's rounding), streamed token by token; a row stops at its end of sequence,
        its ``max_tokens`` or its client's departure, the batch when every row has. Amplified rows: both
        models step on their own KV cache, each row at its own β."""
        from ..adl.steering import stack_rows, steering_hook

        pair = self.pair
        outs = [j.chat for j in jobs]
        assert all(o is not None for o in outs)
        side = outs[0].spec.side  # type: ignore[union-attr]
        amplified = outs[0].spec.beta is not None  # type: ignore[union-attr]
        vecs = [self.steering_vector(o.spec) for o in outs]  # type: ignore[union-attr]
        add = stack_rows([None if v is None else v[0] for v in vecs])  # unsteered rows: a zero vector
        count = GenerationCount()
        dev = pair.input_device(side)
        gens = []
        for o in outs:
            g = torch.Generator(device=dev)
            g.manual_seed(o.seed)  # type: ignore[union-attr]
            gens.append(g)
        for o in outs:
            o.t0 = time.perf_counter()  # type: ignore[union-attr]
        with torch.no_grad():
            rows = [o.ids for o in outs]  # type: ignore[union-attr]
            streams = [_ChatStream(pair, s, rows) for s in (("base", "ft") if amplified else (side,))]
            prompt_mask = streams[-1].mask
            betas = torch.tensor([[float(o.spec.beta or 0.0)] for o in outs], device=dev)  # type: ignore[union-attr]
            with pair.side(side) as m:
                eos = set(_eos_ids(m, pair.tokenizer))
            V = pair.vocab_size
            live = list(range(len(outs)))
            drawn = [0] * len(outs)
            finish = ["length"] * len(outs)
            longest = max(o.max_tokens for o in outs)  # type: ignore[union-attr]
            for t in range(longest):
                for i in list(live):
                    if jobs[i].cancelled.is_set():
                        live.remove(i)
                        outs[i].done("cancelled", backend="hf")  # type: ignore[union-attr]
                if not live:
                    return
                with steering_hook(pair, self.layer, add, prompt_mask):
                    step = [st.step(pair, count).to(dtype=torch.float32, device=dev, copy=True)[:, :V]
                            for st in streams]
                logits = step[1] + betas * (step[1] - step[0]) if amplified else step[0]
                nxt = logits.argmax(-1)
                for i in list(live):
                    o = outs[i]
                    if o.temperature > 0:  # type: ignore[union-attr]
                        probs = torch.softmax(logits[i] / o.temperature, dim=-1)  # type: ignore[union-attr]
                        nxt[i] = torch.multinomial(probs, 1, generator=gens[i])[0]
                    token = int(nxt[i])
                    drawn[i] += 1
                    if not o.token(token, token in eos):  # type: ignore[union-attr]
                        finish[i] = "stop" if token in eos else finish[i]
                    elif drawn[i] < o.max_tokens:  # type: ignore[union-attr]
                        continue
                    live.remove(i)
                    o.done(finish[i], backend="hf", batch=len(outs))  # type: ignore[union-attr]
                if not live:
                    return
                for st in streams:
                    st.advance(nxt)

    # -- the vLLM backend (on the worker thread) ------------------------------------------------
    def _on_vllm(self, job: Job) -> bool:
        """Whether ``job`` streams through the vLLM engines: chat completions of base, finetuned and
        steered models (amplification needs both models' logits at every step, and heat maps their
        hidden states: those stay on the HF pair)."""
        return self.vllm is not None and job.chat is not None and job.chat.spec.beta is None

    def _vllm_request(self, out: "_ChatEmitter") -> tuple[str, Any, Any]:
        """(side, steering vector or None, the key that names it) of a completion."""
        spec = out.spec
        vec = self.steering_vector(spec)
        if vec is None:
            return spec.side, None, None
        return spec.side, vec[0], (spec.position, float(spec.alpha or 0.0))

    def _vllm_batch(self, first: Job) -> None:
        """Stream ``first`` and every completion that arrives while it runs through the vLLM engines,
        all stepping together (continuous batching, at most ``Limits.max_batch``); a queued job that
        cannot join (amplified, a heat map, another steering vector on a ``worker``-steered engine)
        waits at the head of the line and runs when the batch has drained."""
        from ..backends.vllm import VLLMStreams

        streams = VLLMStreams(self.vllm)
        with self.pair.side("ft") as m:
            eos = set(_eos_ids(m, self.pair.tokenizer))
        active: dict[str, Job] = {}
        counter = [0]

        def admit(job: Job) -> bool:
            out = job.chat
            assert out is not None
            side, vector, key = self._vllm_request(out)
            if not streams.can_add(side, key):
                return False
            counter[0] += 1
            rid = f"difflens-{id(self)}-{counter[0]}"
            out.t0 = time.perf_counter()
            try:
                streams.add(rid, side, out.ids, temperature=out.temperature, max_tokens=out.max_tokens,
                            seed=out.seed, layer=self.layer, vector=vector, steer_key=key)
            except Exception as e:  # noqa: BLE001 - this request fails; the batch goes on
                job.emit("error", f"{type(e).__name__}: {e}")
                return True
            active[rid] = job
            return True

        admit(first)
        while active:
            while not self._held and len(active) < self.limits.max_batch:
                try:
                    job = self._queue.get_nowait()
                except queue.Empty:
                    break
                if job.cancelled.is_set():
                    continue
                if not (self._on_vllm(job) and admit(job)):
                    self._held.append(job)  # first in line once the batch drains
            for rid, job in list(active.items()):
                if job.cancelled.is_set():
                    streams.abort(rid)
                    active.pop(rid).chat.done("cancelled", backend="vllm")  # type: ignore[union-attr]
            if not active:
                break
            try:
                events = streams.step()
            except Exception as e:  # noqa: BLE001 - the engine failed: every running request is told
                for rid, job in active.items():
                    job.emit("error", f"{type(e).__name__}: {e}")
                    try:
                        streams.abort(rid)
                    except Exception:  # noqa: BLE001
                        pass
                return
            for ev in events:
                job = active.get(ev.rid)
                if job is None:
                    continue
                out = job.chat
                assert out is not None
                going = True
                for t in ev.tokens:
                    going = out.token(t, t in eos)
                    if not going:
                        break
                if ev.finish is not None or not going:
                    if ev.finish is None:
                        streams.abort(ev.rid)
                    active.pop(ev.rid)
                    out.done(ev.finish or ("stop" if not job.cancelled.is_set() else "cancelled"), backend="vllm")

    # -- generation (on the worker thread) ------------------------------------------------------
    def chat_job(self, spec: ModelSpec, ids: Sequence[int], *, max_tokens: int, temperature: float,
                 seed: int | None, loop: asyncio.AbstractEventLoop | None = None) -> Job:
        """A job that streams one completion: ``token`` events, then ``done`` with the finish reason,
        token counts, the seed and temperature used and the time to the first token."""
        seed = random.randrange(2 ** 31) if seed is None else int(seed)

        def work(job: Job) -> None:
            out = job.chat
            assert out is not None
            out.t0 = time.perf_counter()
            finish = "length"
            for token, is_eos in self.generate_ids(spec, ids, max_tokens=max_tokens, temperature=temperature,
                                                   seed=seed, cancelled=job.cancelled):
                if not out.token(token, is_eos):
                    finish = "stop" if is_eos and not job.cancelled.is_set() else finish
                    break
            out.done(finish)

        job = Job(work, loop)
        job.chat = _ChatEmitter(job, self.pair.tokenizer, spec, ids, max_tokens=max_tokens, temperature=temperature,
                                seed=seed)
        return job

    def generate_ids(self, spec: ModelSpec, ids: Sequence[int], *, max_tokens: int, temperature: float, seed: int,
                     cancelled: threading.Event | None = None) -> Iterator[tuple[int, bool]]:
        """``(token id, is end-of-sequence)`` as each is drawn (the worker thread calls this)."""
        if spec.beta is not None:
            yield from self._amplified(ids, beta=spec.beta, max_tokens=max_tokens, temperature=temperature,
                                       seed=seed, cancelled=cancelled)
        else:
            yield from self._generate(spec, ids, max_tokens=max_tokens, temperature=temperature, seed=seed,
                                      cancelled=cancelled)

    def _generate(self, spec: ModelSpec, ids: Sequence[int], *, max_tokens: int, temperature: float, seed: int,
                  cancelled: threading.Event | None) -> Iterator[tuple[int, bool]]:
        """``model.generate`` on a thread of its own, its tokens handed over one by one (a streamer);
        a steered model under the steering stage's hook."""
        from transformers import StoppingCriteria, StoppingCriteriaList
        from transformers.generation.streamers import BaseStreamer

        from ..adl.steering import steering_hook

        pair, tok = self.pair, self.pair.tokenizer
        x, mask = pad_left([list(ids)], pad_id(tok), pair.input_device(spec.side))
        add = self.steering_vector(spec)
        handoff: queue.Queue = queue.Queue()
        stop = threading.Event()  # set when the consumer is done (or cancelled): generate() stops at its next step

        class Tokens(BaseStreamer):
            started = False

            def put(self, value: torch.Tensor) -> None:
                if not self.started:  # generate() first hands over the prompt
                    self.started = True
                    return
                for t in value.reshape(-1).tolist():
                    handoff.put(("token", int(t)))

            def end(self) -> None:
                handoff.put(("end", None))

        class Cancelled(StoppingCriteria):
            def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kw: Any) -> torch.Tensor:
                done = stop.is_set() or (cancelled is not None and cancelled.is_set())
                return torch.full((input_ids.shape[0],), done, dtype=torch.bool, device=input_ids.device)

        kw: dict[str, Any] = {"do_sample": temperature > 0, "max_new_tokens": int(max_tokens),
                              "pad_token_id": tok.pad_token_id, "streamer": Tokens(),
                              "stopping_criteria": StoppingCriteriaList([Cancelled()])}
        if temperature > 0:
            kw.update(temperature=float(temperature), top_p=1.0, top_k=0)

        def run() -> None:
            try:
                with torch.no_grad(), pair.side(spec.side) as m, steering_hook(pair, self.layer, add, mask):
                    torch.manual_seed(seed)
                    m.generate(input_ids=x, attention_mask=mask, **kw)
            except Exception as e:  # noqa: BLE001 - handed to the consumer, raised there
                handoff.put(("fail", e))
            finally:
                handoff.put(("end", None))

        with pair.side(spec.side) as m:
            eos = set(_eos_ids(m, tok))
        # generate() runs on its own thread so that this generator can hand each token on as it comes;
        # the worker thread waits for it, so the models are still used by one job at a time
        gen = threading.Thread(target=run, name="difflens-generate", daemon=True)
        gen.start()
        try:
            while True:
                kind, val = handoff.get()
                if kind == "end":
                    break
                if kind == "fail":
                    raise val
                yield val, val in eos
                if val in eos:
                    break
        finally:
            stop.set()
            gen.join()

    def _amplified(self, ids: Sequence[int], *, beta: float, max_tokens: int, temperature: float, seed: int,
                   cancelled: threading.Event | None) -> Iterator[tuple[int, bool]]:
        """Logit-difference amplification, one token at a time: both models on their own KV cache
        (amplify's per-model stream), the next token from ``softmax((l_ft + β(l_ft − l_base)) / T)``
        (greedy at T = 0), the same draws as :func:`~difflens.methods.amplify.amplified_generate`."""
        pair = self.pair
        count = GenerationCount()
        with torch.no_grad():
            streams = [_ChatStream(pair, side, [ids]) for side in ("base", "ft")]
            with pair.side("ft") as m:
                eos = set(_eos_ids(m, pair.tokenizer))
            dev = pair.input_device("ft")
            V = pair.vocab_size
            torch.manual_seed(seed)
            for t in range(max_tokens):
                if cancelled is not None and cancelled.is_set():
                    return
                lb, lf = (s.step(pair, count).to(dtype=torch.float32, device=dev, copy=True) for s in streams)
                lf, lb = lf[:, :V], lb[:, :V]
                scores = lf + beta * (lf - lb)
                if temperature > 0:
                    if temperature != 1.0:
                        scores = scores / temperature
                    nxt = torch.multinomial(torch.softmax(scores, dim=-1), num_samples=1).squeeze(1)
                else:
                    nxt = scores.argmax(-1)
                token = int(nxt[0])
                yield token, token in eos
                if token in eos:
                    return
                if t + 1 < max_tokens:
                    for s in streams:
                        s.advance(nxt)

    # -- heat maps (on the worker thread) -------------------------------------------------------
    def heatmap_job(self, text: str, *, loop: asyncio.AbstractEventLoop | None = None, top: int = 5) -> Job:
        from .heatmap import token_heatmap

        if not isinstance(text, str) or not text.strip():
            raise BadRequest("'text' must be a non-empty string")
        if len(text) > self.limits.max_text_chars:
            raise BadRequest(f"'text' has {len(text)} characters; at most {self.limits.max_text_chars}")

        def work(job: Job) -> None:
            job.emit("done", token_heatmap(self.pair, text, layer=self.layer, top=top,
                                           max_tokens=self.limits.max_heatmap_tokens))

        return Job(work, loop)


def _method_datasets(layout: Any) -> list[str]:
    d = layout.root / "methods"
    return [p.name for p in sorted(d.iterdir()) if p.is_dir()] if d.is_dir() else []




class _ChatStream(_Stream):
    """Amplification's per-model stream (its KV cache, its next inputs), started from rendered
    conversations' ids (one row each, left-padded) instead of prompts."""

    def __init__(self, pair: Any, side: str, rows: Sequence[Sequence[int]]):
        super().__init__(pair, side, [""])
        self.ids, self.mask = pad_left([list(r) for r in rows], pad_id(pair.tokenizer), pair.input_device(side))
        self.pos = (self.mask.long().cumsum(-1) - 1).masked_fill(self.mask == 0, 0)
