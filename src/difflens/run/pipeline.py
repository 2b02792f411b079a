"""`difflens run CONFIG.yaml`: one validated config drives collect → lens → steer → report.

Stages reuse what is already computed (each stage is fingerprinted), a failed stage is reported
and leaves earlier results intact, and each stage ends with a one-line summary. The stage registry
is the ``stage_<name>`` methods of :class:`Runner`, in the order of :data:`difflens.run.config.STAGES`.
"""
from __future__ import annotations

import time
from typing import Any

from rich.console import Console

from ..adl.collect import collect
from ..errors import ConfigError, DifflensError
from ..graders import graders_for
from .config import ADL_STAGES, RunConfig
from ..rundir.layout import RunLayout, read_json, write_json
from .stages import run_lens, run_steer, steer_backend


def _llm_client(cfg: RunConfig) -> Any:
    if cfg.grader != "llm":
        return None
    if cfg.llm is None:
        raise ConfigError("grader: llm needs an `llm:` section (base_url, model, api_key_env).")
    from ..llm import client_for

    return client_for(cfg.llm.model, cfg.llm.base_url, cfg.llm.api_key_env)


class Runner:
    """Executes the stages of a :class:`RunConfig`, loading models only when a stage needs them."""

    def __init__(self, cfg: RunConfig, *, console: Console | None = None, progress: bool = True):
        cfg.check_generation_backend()  # generation_backend: vllm without vLLM fails here, before anything loads
        self.cfg = cfg
        self.layout = RunLayout(cfg.out).ensure()
        self.console = console or Console()
        self.progress = progress
        self._pair: Any = None
        self._graders: Any = None
        self._client: Any = None
        self.status: dict[str, str] = {}

    @property
    def pair(self) -> Any:
        if self._pair is None:
            from ..models.pair import load_pair

            self._pair = load_pair(self.cfg.base, self.cfg.finetuned, dtype=self.cfg.dtype,
                                   placement=self.cfg.placement())
        return self._pair

    def precision(self) -> str:
        """The precision the pair computes in (the loaded pair's, else resolved without loading it)."""
        if self._pair is not None:
            return self._pair.precision
        from ..models.pair import pair_precision

        return pair_precision(self.cfg.base, dtype=self.cfg.dtype, placement=self.cfg.placement())

    @property
    def graders(self) -> Any:
        if self._graders is None:
            self._client = _llm_client(self.cfg)
            self._graders = graders_for(self.pair, self.cfg.grader, self._client)
        return self._graders

    # -- stages ----------------------------------------------------------------------------
    def stage_collect(self) -> str:
        cfg = self.cfg.collect_config()
        if self.progress:
            from .stages import collect_estimate

            collect_estimate(self.pair, cfg)
        res = collect(self.pair, self.layout, cfg, progress=self.progress)
        parts = [f"{ds}: N={items[0].n}, layers {[c.layer for c in items]}" for ds, items in res.items()]
        return "; ".join(parts)

    def stage_lens(self) -> str:
        res = run_lens(self.pair, self.layout, self.graders, self.cfg.lens, progress=self.progress)
        bits = []
        for r in res:
            for e in r.entries:
                if e.source == "delta":
                    bits.append(f"p{e.position}@{e.chosen_scale:g}: {' '.join(t.strip() for t in e.selected_tokens[:4])}")
        return "; ".join(bits)

    def stage_steer(self) -> str:
        backend = steer_backend(self.pair, self.layout, self.cfg.generation_backend, **self.cfg.backend_options())
        try:
            res = run_steer(self.pair, self.layout, self.graders, self.cfg.steering, progress=self.progress,
                            backend=backend)
        finally:
            close = getattr(backend, "close", None)  # vLLM: free its engine before later stages
            if callable(close):
                close()
        return "; ".join(f"layer {r.layer} α " + ", ".join(f"p{t.position}={t.alpha:.2f}" for t in r.thresholds)
                         for r in res)

    def stage_methods(self) -> str:
        """The diffing methods beside ADL (:mod:`difflens.methods`), then the same on the control pair."""
        from ..methods.stage import run_methods_stage

        chosen = [m for m in self.cfg.methods if m != "adl"]
        return run_methods_stage(lambda: self.pair, self.layout, chosen, self.cfg.diff,
                                 coherence=lambda: self.graders.coherence,
                                 dataset=self.cfg.diff.dataset or self.cfg.datasets[0],
                                 steering=self.cfg.steering, progress=self.progress)

    def stage_evaluate(self) -> str:
        from ..eval.evaluate import evaluate
        from ..eval.ftdata import resolve_ft_data

        manifest = read_json(self.layout.manifest) if self.layout.manifest.exists() else {
            "models": {"base": {"spec": self.cfg.base}, "finetuned": {"spec": self.cfg.finetuned}}}
        ft = resolve_ft_data(manifest, organism=self.cfg.organism, ft_data=self.cfg.ft_data,
                             description=self.cfg.description)
        s = evaluate(self.layout, ft, relevance_grader=self.graders.relevance, cfg=self.cfg.evaluate,
                     pair_loader=lambda: self.pair, progress=self.progress, precision=self.precision())
        bits = [f"skipped {', '.join(sorted(s.skipped))}"] if s.skipped else []
        for le in s.layers():
            r = (le.relevance or {}).get("delta", {}).get("patchscope")
            if r is not None:
                base = (le.relevance or {}).get("base", {}).get("patchscope")
                bits.append(f"relevance δ̄ {r.max:.0f}% (h̄_base {base.max:.0f}%)" if base else f"relevance δ̄ {r.max:.0f}%")
            if le.steering_similarity:
                ss = le.steering_similarity
                bits.append(f"steered↔D_ft {ss['steered_vs_ft'].mean:.2f} vs unsteered {ss['unsteered_vs_ft'].mean:.2f}")
            if le.identification:
                bits.append(f"identification rank {le.identification.adl_rank}/{le.identification.n_candidates}")
        for name, me in s.methods.items():
            if name == "adl":
                continue
            rel, base = me.role_relevance("method"), me.role_relevance("baseline")
            if rel is not None:
                bits.append(f"{name} relevance {rel:.0f}% (baseline {base or 0:.0f}%)")
            if me.identification:
                bits.append(f"{name} rank {me.identification['rank']}/{me.identification['n_candidates']}")
        return "; ".join(bits)

    def stage_report(self) -> str:
        from ..report import render_report

        return f"wrote {render_report(self.layout.root)}"

    def run(self) -> dict[str, str]:
        """Run every configured stage in order; raises after reporting the first failure."""
        write_json(self.layout.run_config(), self.cfg.model_dump(mode="json"))
        try:
            self._run_stages()
        finally:
            if self._client is not None:
                write_json(self.layout.llm_usage(), self._client.usage_summary())
        return self.status

    def _run_stages(self) -> None:
        for stage in self.cfg.stages:
            if stage in ADL_STAGES and "adl" not in self.cfg.methods:
                self.status[stage] = "skipped"
                self.console.print(f"[dim]- {stage} skipped (adl is not among the methods)[/]")
                continue
            if stage == "methods" and not [m for m in self.cfg.methods if m != "adl"]:
                self.status[stage] = "skipped"
                continue
            fn = getattr(self, f"stage_{stage}")
            t0 = time.time()
            try:
                summary = fn()
            except DifflensError as e:
                self.status[stage] = f"failed: {e}"
                self.console.print(f"[red]✗ {stage}[/] failed after {time.time() - t0:.0f}s: {e}")
                self.console.print(f"  earlier results in {self.layout.root} are intact; fix the problem and rerun.")
                raise
            self.status[stage] = "done"
            self.console.print(f"[green]✓ {stage}[/] ({time.time() - t0:.0f}s) {summary}")


