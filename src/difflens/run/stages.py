"""Lens and steering stages over a run directory: resumable, keyed by a fingerprint of their inputs.

Each stage reads the collection artifacts, writes typed artifacts through :class:`RunLayout`
and records a fingerprint; rerunning with unchanged inputs is a no-op, a changed config
recomputes, and steering keeps finished positions when interrupted.

Steering's final generations (steered, unsteered, random-direction control) go through a
:class:`~difflens.backends.GenerationBackend`: the run's own HF pair by default, or vLLM
(:func:`steer_backend`); the threshold search and its calibration always use the HF pair.
"""
from __future__ import annotations

import json
import sys
import time
from typing import Any, Callable, Sequence

from pydantic import BaseModel, Field

from ..adl.collect import load_collected
from ..adl.logit_lens import logit_lens
from ..adl.patchscope import READERS as PATCHSCOPE_READERS, patchscope
from ..adl.steered import GenerationRequest, request_rows, request_texts
from ..adl.steering import Ride, SteeringConfig, find_threshold, find_thresholds, generate, required_coherent
from ..backends import GenerationBackend, HFBackend, final_generations, final_generations_batch, final_records
from ..errors import ConfigError, RunDirError
from ..graders import Graders, grader_identity
from ..models.pair import ModelPair, pair_from_run  # noqa: F401 - pair_from_run re-exported
from ..models.packed import with_kept_packs
from ..models.precision import fingerprint_part
from ..rundir import artifacts as A
from ..rundir.layout import RunLayout, fingerprint, read_json, write_json
from .cost import format_seconds


class LensConfig(BaseModel):
    positions: list[int] | None = None  # None: all collected positions
    top_k: int = Field(20, ge=1)
    controls: bool = True  # Patchscope of δ̄ through the base model, a random vector, the unpatched prompt


def steer_backend(pair: ModelPair, layout: RunLayout, name: str = "hf", **options: Any) -> GenerationBackend:
    """Who samples the steering stage's final generations: :class:`~difflens.backends.HFBackend` over
    ``pair`` for ``hf`` (no options), else :func:`difflens.backends.backend_for_run` over the run's
    checkpoints (``options``, e.g. ``tensor_parallel_size``, go to its engines; nothing loads yet)."""
    if name == "hf":
        if options:
            raise ConfigError(f"options {sorted(options)} apply to the vllm generation backend only.")
        return HFBackend(pair)
    from ..backends import backend_for_run  # looked up per call (tests substitute it)

    return backend_for_run(name, layout, **options)


def _positions(requested: Sequence[int] | None, k: int) -> list[int]:
    pos = list(requested) if requested is not None else list(range(k))
    bad = [j for j in pos if not 0 <= j < k]
    if bad:
        raise ConfigError(f"positions {bad} were not collected (k={k}); choose from 0..{k - 1}.")
    return pos


def _collect_fp(layout: RunLayout, dataset: str) -> str:
    return read_json(layout.collect_stats(dataset))["fingerprint"]


@with_kept_packs
def run_lens(pair: ModelPair, layout: RunLayout, graders: Graders, cfg: LensConfig | None = None, *,
             datasets: Sequence[str] | None = None, layers: Sequence[int] | None = None,
             progress: bool = True) -> list[A.PatchscopeResult]:
    """Logit lens + Patchscope for every collected dataset × layer."""
    cfg = cfg or LensConfig()
    out = []
    for dataset, layer in layout.targets(datasets, layers):
        c = load_collected(layout, dataset, layer)
        pos = _positions(cfg.positions, c.positions)
        fp = fingerprint({"collect": _collect_fp(layout, dataset), "layer": layer, "pos": pos, "k": cfg.top_k,
                          "grader": grader_identity(graders.scale), "controls": cfg.controls,
                          "readers": PATCHSCOPE_READERS, **fingerprint_part(getattr(pair, "precision", None))})
        stage = layout.stage_key("lens", dataset, layer)
        if layout.stage_done(stage, fp) and layout.patchscope(dataset, layer).exists():
            out.append(A.load(A.PatchscopeResult, layout.patchscope(dataset, layer)))
            continue
        controls = tuple(A.CONTROLS) if cfg.controls else ()
        t0 = time.time()
        A.save(logit_lens(pair, c, pos, k=cfg.top_k, sources=(*A.SOURCES, *(("random",) if controls else ()))),
               layout.logit_lens(dataset, layer))
        ps = patchscope(pair, c, pos, graders.scale, sources=(*A.SOURCES, *controls), progress=progress)
        A.save(ps, layout.patchscope(dataset, layer))
        layout.mark_stage(stage, fp, seconds=round(time.time() - t0, 2))  # the cost column of method comparisons
        out.append(ps)
    return out


def collect_estimate(pair: ModelPair, cfg: Any) -> float | None:
    """One stderr line before a long collection (:func:`~difflens.run.cost.announce`): both models
    to the deepest layer over N samples of k tokens and the η texts, per dataset, at the ratio
    bench/floor.py measured. Nothing when it would be short."""
    from . import cost

    try:
        shape = cost.ModelShape.of_pair(pair)
        layer = max(pair.arch.resolve_layer(x) for x in cfg.layers)
        f = cost.collect_flops(shape, layer, [cfg.positions] * cfg.samples, [cfg.norm_len] * cfg.norm_texts())
        flops = (f["samples"] + f["eta"]) * len(cfg.datasets)
    except Exception:  # noqa: BLE001 - an estimate never stops the stage
        return None
    return cost.announce(f"collecting {len(cfg.datasets)} dataset(s) × {cfg.samples} samples × {cfg.positions} "
                         f"tokens to layer {layer}", flops, pair.device, str(getattr(pair, "precision", "float32")),
                         cost.COLLECT_FLOOR_RATIO, "an interrupted collection resumes from its last checkpoint")


def _steer_estimate(pair: ModelPair, cfg: SteeringConfig, positions: int, layer: int) -> None:
    """One stderr line before a steering stage (:func:`~difflens.run.cost.announce`): its FLOPs at
    this machine's measured matmul rate and the ratio to the floor bench/floor.py measured
    (:data:`~difflens.run.cost.STEER_FLOOR_RATIO`; a 16-bit CPU run's time beyond the matmuls counted
    at the float32 rate)."""
    from ..adl.steering import default_grid
    from . import cost

    try:
        shape = cost.ModelShape.of_pair(pair)
        flops = cost.steer_flops_estimate(shape, cfg, positions, grid=cfg.grid or default_grid(pair))
    except Exception:  # noqa: BLE001 - an estimate never stops the stage
        return
    cost.announce(f"steering layer {layer}: {positions} position(s)", flops, pair.device,
                  str(getattr(pair, "precision", "float32")), cost.STEER_FLOOR_RATIO,
                  "fewer --positions or --max-new-tokens shorten it", always=True)


class _FinalRiders:
    """Final-generation jobs waiting for a search round to ride along (:func:`find_thresholds`'s
    ``riders``): each round takes whole jobs while they fit in the rows its call has left; a job's
    texts are saved in the stage's partial file as soon as its round's call ends."""

    def __init__(self, partial: dict[str, Any], path: Any, cfg: SteeringConfig, eta: float) -> None:
        self.partial, self.path, self.cfg, self.eta = partial, path, cfg, eta
        self.queue: list[tuple[int, Any, float, str | None]] = []

    def rows(self, jobs: list[tuple[int | None, Any, float, str | None]]) -> tuple[
            list[str], list[Any], Callable[[list[str]], None]]:
        """The rows of final-generation ``jobs`` (prompts and steering vectors), and ``keep(texts)``,
        which saves their texts to the partial file."""
        reqs = [GenerationRequest(self.cfg.prompts, d, a, self.cfg.final_samples) for _, d, a, _ in jobs]
        prompts, vectors = request_rows(reqs, self.eta)

        def keep(texts: list[str]) -> None:
            gens = final_records(jobs, request_texts(reqs, texts), self.cfg)
            self.partial["generations"] += [g.model_dump() for g in gens]
            write_json(self.path, self.partial)

        return prompts, vectors, keep

    def __call__(self, room: int) -> Ride | None:
        per_job = len(self.cfg.prompts) * self.cfg.final_samples
        take = []
        while self.queue and (len(take) + 1) * per_job <= room:
            take.append(self.queue.pop(0))
        if not take:
            return None
        prompts, vectors, keep = self.rows(take)
        return Ride(prompts=prompts, vectors=vectors, temperature=self.cfg.final_temperature, done=keep)


def _bars_cfg(cfg: SteeringConfig, partial: dict[str, Any]) -> SteeringConfig:
    """``cfg`` with the coherence bars the unsteered pass rates in ``partial`` set: pooled, and each
    threshold prompt held to its own rate (prompts differ: roman_concrete's three pass 4, 2 and 8 of
    10 unsteered, and a pooled bar above a prompt's own rate fails it at every α, α = 0 included)."""
    need = required_coherent(cfg, partial.get("unsteered_pass_rate"))
    per_need = [required_coherent(cfg, r) for r in partial["unsteered_pass_rates"]]
    return cfg.model_copy(update={"min_coherent": need, "min_coherent_per_prompt": per_need})


@with_kept_packs
def run_steer(pair: ModelPair, layout: RunLayout, graders: Graders, cfg: SteeringConfig | None = None, *,
              datasets: Sequence[str] | None = None, layers: Sequence[int] | None = None,
              progress: bool = True, backend: GenerationBackend | None = None) -> list[A.SteeringResult]:
    """Threshold search and final steered/unsteered generations, resumable per position.

    ``backend`` samples the final generations (default: ``HFBackend(pair)``, the reference); the
    threshold search always runs on ``pair``. A backend other than ``hf`` is part of the stage's
    fingerprint (HF results stay valid) and is recorded in steering.json.

    On the HF backend, with several positions searched in shared rounds, a position whose search has
    ended hands its final generations (steered and random control) to the rounds still to come: they
    ride those rounds' calls (:class:`_FinalRiders`; drawn from the round's generator, at the final
    temperature) and are saved as each such call ends; so do those of positions searched before an
    interruption. Jobs left when the search ends run after it, seeded ``seed + 17`` per call as before.
    The unsteered samples (the final generations, and the threshold prompts' answers that calibrate
    the grader and set the coherence bars) ride the first round's call there, drawn from its
    generator; elsewhere they take calls of their own before the search.

    On a CPU the packed weights of the models' linear layers are made once for the whole stage
    (:func:`difflens.models.packed.keep_packs`), not once per generation round and grader call.
    """
    from rich.progress import Progress

    cfg = cfg or SteeringConfig()
    backend = backend if backend is not None else HFBackend(pair)
    results = []
    for dataset, layer in layout.targets(datasets, layers):
        c = load_collected(layout, dataset, layer)
        pos = _positions(cfg.positions, c.positions)
        inputs = {"collect": _collect_fp(layout, dataset), "layer": layer,
                  "cfg": cfg.identity(), "grader": grader_identity(graders.coherence)}
        if backend.name != "hf":  # the HF default adds nothing: fingerprints from before backends stay valid
            inputs["generation_backend"] = backend.name
        # the search, the grader's reference model and the HF generations run in the pair's precision
        fp = fingerprint(inputs | fingerprint_part(getattr(pair, "precision", None)))
        stage = layout.stage_key("steer", dataset, layer)
        partial_path = layout.steering_partial(dataset, layer)
        t_stage = time.time()
        partial: dict[str, Any] = {"fingerprint": fp, "thresholds": {}, "generations": [], "calibration": None}
        if layout.stage_done(stage, fp) and layout.steering(dataset, layer).exists():
            res = A.load(A.SteeringResult, layout.steering(dataset, layer))
            if {t.position for t in res.thresholds} >= set(pos):
                results.append(res)
                continue
            # more positions requested than before: keep the finished ones
            partial["thresholds"] = {str(t.position): t.model_dump() for t in res.thresholds}
            partial["generations"] = [g.model_dump() for g in
                                      A.load_jsonl(A.Generation, layout.steering_generations(dataset, layer))]
        if partial_path.exists():
            try:
                old = json.loads(partial_path.read_text())
                if old.get("fingerprint") == fp:
                    partial = old
            except json.JSONDecodeError:
                pass
        todo = [j for j in pos if str(j) not in partial["thresholds"]]
        joint = len(todo) > 1 and cfg.search == "batched"
        # the HF backend on the search's own pair generates rows with a steering vector each: final
        # generations can share the search rounds' calls
        ride = joint and isinstance(backend, HFBackend) and backend.holds(pair)
        calibration_rows = [p for p in cfg.threshold_prompts for _ in range(2 * cfg.search_samples)]

        def settle() -> SteeringConfig:
            """The grader calibrated on the unsteered samples; each threshold prompt's bar."""
            calibrate = getattr(graders.coherence, "calibrate", None)
            if callable(calibrate):
                calibrate(partial["calibration_texts"] + [g["text"] for g in partial["generations"]
                                                          if g["position"] is None])
                partial["calibration"] = getattr(graders.coherence, "calibration", None)
            if partial.get("unsteered_pass_rate") is None or partial.get("unsteered_pass_rates") is None:
                verdicts = [bool(v) for v in graders.coherence.grade(partial["calibration_texts"])]
                partial["unsteered_pass_rate"] = sum(verdicts) / max(len(verdicts), 1)
                per = max(1, len(verdicts) // max(1, len(cfg.threshold_prompts)))
                partial["unsteered_pass_rates"] = [sum(verdicts[i * per:(i + 1) * per]) / per
                                                   for i in range(len(cfg.threshold_prompts))]
                write_json(partial_path, partial)
            return _bars_cfg(cfg, partial)

        prelude = None
        riders = _FinalRiders(partial, partial_path, cfg, c.eta_ft) if ride else None
        has_unsteered = any(g["position"] is None for g in partial["generations"])
        if riders is not None and not has_unsteered and partial.get("calibration_texts") is None:
            # the unsteered samples (final generations, and the calibration's answers to the threshold
            # prompts at the search temperature) ride the first search round: no calls of their own
            final_prompts, final_vectors, keep = riders.rows([(None, None, 0.0, None)])

            def calibrated(texts: list[str]) -> SteeringConfig:
                k = len(calibration_rows)
                partial["calibration_texts"] = texts[:k]
                keep(texts[k:])  # saves both
                return settle()

            prelude = Ride(prompts=calibration_rows + final_prompts,
                           vectors=[None] * len(calibration_rows) + final_vectors,
                           temperature=[cfg.search_temperature] * len(calibration_rows)
                           + [cfg.final_temperature] * len(final_prompts), done=calibrated)
            search_cfg = cfg  # its bars come with the prelude's texts
        else:
            if not has_unsteered:
                gens = final_generations(backend, layer=layer, position=None, direction=None, alpha=0.0,
                                         eta=c.eta_ft, cfg=cfg)
                partial["generations"] += [g.model_dump() for g in gens]
                write_json(partial_path, partial)
            if partial.get("calibration_texts") is None:
                # unsteered answers to the threshold prompts at the search temperature: the offline
                # grader's calibration and the reference pass rate of the relative coherence bar
                texts = generate(pair, cfg.threshold_prompts, layer=layer, direction=None, alpha=0.0, eta=c.eta_ft,
                                 n=2 * cfg.search_samples, temperature=cfg.search_temperature,
                                 max_new_tokens=cfg.max_new_tokens, seed=cfg.seed + 99)
                partial["calibration_texts"] = [t for ts in texts for t in ts]
                write_json(partial_path, partial)
            search_cfg = settle()

        def final_jobs(j: int) -> list[tuple[int, Any, float, str | None]]:
            """Position j's final-generation jobs without generations yet: (j, direction, α, control)."""
            have = {(g["position"], g.get("control")) for g in partial["generations"] if g["position"] is not None}
            alpha = float(partial["thresholds"][str(j)]["alpha"])
            out: list[tuple[int, Any, float, str | None]] = []
            if (j, None) not in have:
                out.append((j, c.delta[j], alpha, None))
            if cfg.random_control and (j, "random") not in have:  # what steering does without δ̄
                out.append((j, c.vectors("random")[j], alpha, "random"))
            return out

        if todo and progress:
            _steer_estimate(pair, cfg, len(todo), layer)
        with Progress(disable=not progress, transient=True) as bar:
            task = bar.add_task(f"steering layer {layer}", total=len(pos), completed=len(pos) - len(todo))
            t_start = time.time()
            finished = [0]

            def done(th: A.SteeringThreshold) -> None:  # saved as each position finishes
                partial["thresholds"][str(th.position)] = th.model_dump()
                write_json(partial_path, partial)
                if riders is not None:  # its final generations ride along the rounds still to come
                    riders.queue += final_jobs(th.position)
                bar.advance(task)
                finished[0] += 1
                if progress and finished[0] < len(todo):
                    # one after another: ETA from the positions done so far; in shared rounds the
                    # others are as far as this one
                    left = (time.time() - t_start) / finished[0] * (len(todo) - finished[0])
                    eta_note = "" if joint else f", searches left about {format_seconds(left)}"
                    bar.console.log(f"steering layer {layer}: position {th.position} done ({finished[0]}/{len(todo)})"
                                    f"{eta_note} (+ final generations)")

            if riders is not None:  # positions searched before an interruption, their finals not yet sampled
                riders.queue += [job for j in sorted(int(x) for x in partial["thresholds"]) for job in final_jobs(j)]
            if joint:
                # all positions' searches in shared rounds: one generate and one grader call per round
                find_thresholds(pair, graders.coherence, layer=layer, directions={j: c.delta[j] for j in todo},
                                eta=c.eta_ft, cfg=search_cfg, on_done=done, riders=riders, prelude=prelude)
            else:
                for j in todo:
                    done(find_threshold(pair, graders.coherence, layer=layer, position=j, direction=c.delta[j],
                                        eta=c.eta_ft, cfg=search_cfg))
        # the final steered (and random-direction control) generations of every searched position
        # without them, in as few generation calls as memory allows (one batch, a steering vector per row)
        jobs = [job for j in sorted(int(x) for x in partial["thresholds"]) for job in final_jobs(j)]
        if jobs:
            # each finished generation call is saved: an interrupted stage resumes at the next call
            key = [[j, control, alpha] for j, _, alpha, control in jobs]
            saved = partial.get("final_calls") or {}
            if saved.get("jobs") != key:
                saved = {"jobs": key, "calls": {}}
            partial["final_calls"] = saved
            t_final = time.time()
            ran = [0]

            def call_done(i: int, calls: int, texts: list[str]) -> None:
                saved["calls"] = {k: v for k, v in saved["calls"].items() if k.endswith(f"/{calls}")}
                saved["calls"][f"{i}/{calls}"] = texts
                write_json(partial_path, partial)
                ran[0] += 1
                if progress:
                    left = calls - len(saved["calls"])
                    eta_note = f", about {format_seconds((time.time() - t_final) / ran[0] * left)} left" if left else ""
                    print(f"[difflens] steering layer {layer}: final generations, call {len(saved['calls'])}/{calls} "
                          f"done ({len(jobs)} steered / control jobs){eta_note}", file=sys.stderr, flush=True)

            gens = final_generations_batch(backend, jobs, layer=layer, eta=c.eta_ft, cfg=cfg,
                                           done={tuple(int(x) for x in k.split("/")): v
                                                 for k, v in saved["calls"].items()}, on_call=call_done)
            partial["generations"] += [g.model_dump() for g in gens]
            partial.pop("final_calls", None)
            write_json(partial_path, partial)
        if partial.get("unsteered_pass_rates") is None:
            raise RuntimeError("the threshold search ended without running its prelude (the unsteered samples)")
        done = sorted(set(pos) | {int(j) for j in partial["thresholds"]})
        bars = _bars_cfg(cfg, partial)
        need, per_need = bars.min_coherent, bars.min_coherent_per_prompt
        res = A.SteeringResult(dataset=dataset, layer=layer, eta_ft=c.eta_ft, grader=graders.coherence.name,
                               thresholds=[A.SteeringThreshold(**partial["thresholds"][str(j)]) for j in done],
                               prompts=cfg.prompts, samples_per_prompt=cfg.final_samples,
                               temperature=cfg.final_temperature,
                               unsteered_pass_rate=partial.get("unsteered_pass_rate"), min_coherent=need,
                               unsteered_pass_rates=partial.get("unsteered_pass_rates"),
                               min_coherent_per_prompt=per_need,
                               max_new_tokens=cfg.max_new_tokens, generation_backend=backend.name,
                               precision=str(getattr(pair, "precision", "float32")))
        order = {p: i for i, p in enumerate(cfg.prompts)}
        # unsteered, then by position, steered before its control, prompt and sample: the order is the
        # same whether a job rode a search round or ran after the search
        gens_out = sorted((A.Generation(**g) for g in partial["generations"] if g["position"] is None
                           or g["position"] in done),
                          key=lambda g: (g.position is not None, -1 if g.position is None else g.position,
                                         g.control or "", order.get(g.prompt, len(order)), g.sample))
        A.save_jsonl(gens_out, layout.steering_generations(dataset, layer))
        A.save(res, layout.steering(dataset, layer))
        # seconds: this call's (a resumed stage counts only what it computed now)
        layout.mark_stage(stage, fp, calibration=partial.get("calibration"), seconds=round(time.time() - t_stage, 2))
        partial_path.unlink(missing_ok=True)
        results.append(res)
    return results
