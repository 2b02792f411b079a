"""`difflens run CONFIG.yaml`: one validated config drives collect → lens → steer → report.

Stages reuse what is already computed (each stage is fingerprinted), a failed stage is reported
and leaves earlier results intact, and each stage ends with a one-line summary.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from rich.console import Console

from .collect import CollectConfig, collect
from .configfile import read_yaml
from .errors import ConfigError, DifflensError
from .layout import RunLayout, write_json
from .stages import LensConfig, graders_for, run_lens, run_steer
from .steering import SteeringConfig

Stage = Literal["collect", "lens", "steer", "evaluate", "agent", "report"]
ALL_STAGES: tuple[str, ...] = ("collect", "lens", "steer", "evaluate", "agent", "report")
AVAILABLE_STAGES: tuple[str, ...] = ("collect", "lens", "steer", "report")


class LLMSection(BaseModel):
    model_config = ConfigDict(extra="forbid")
    base_url: str = "https://openrouter.ai/api/v1"
    model: str = "openai/gpt-5-mini"
    api_key_env: str = "OPENROUTER_API_KEY"


class LensSection(LensConfig):
    model_config = ConfigDict(extra="forbid")


class SteeringSection(SteeringConfig):
    model_config = ConfigDict(extra="forbid")


class RunConfig(BaseModel):
    """Everything one run needs. Unknown fields are refused (typos must not pass silently)."""

    model_config = ConfigDict(extra="forbid")

    out: Path
    base: str = "smollm2-135m-instruct"
    finetuned: str
    organism: str | None = Field(None, description="organism name: ground truth for evaluation/agent stages")
    datasets: list[str] = Field(default_factory=lambda: ["wiki"])
    layers: list[float | int] = Field(default_factory=lambda: [0.5])
    positions: int = Field(5, ge=1)
    samples: int = Field(10_000, ge=1)
    batch_size: int = Field(64, ge=1)
    seed: int = 0
    device: str = "cpu"
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    grader: Literal["offline", "llm"] = "offline"
    llm: LLMSection | None = None
    stages: list[Stage] = Field(default_factory=lambda: list(AVAILABLE_STAGES))
    lens: LensSection = Field(default_factory=LensSection)
    steering: SteeringSection = Field(default_factory=SteeringSection)

    def collect_config(self) -> CollectConfig:
        return CollectConfig(datasets=self.datasets, samples=self.samples, positions=self.positions,
                             layers=self.layers, seed=self.seed, batch_size=self.batch_size)


def _format_validation(e: ValidationError, source: str) -> str:
    lines = []
    for err in e.errors():
        loc = ".".join(str(x) for x in err["loc"]) or "(top level)"
        msg = "unknown field (check the spelling)" if err["type"] == "extra_forbidden" else err["msg"]
        lines.append(f"  - {loc}: {msg}")
    return f"invalid run config {source}:\n" + "\n".join(lines)


def load_config(path: str | Path, **overrides: Any) -> RunConfig:
    """Read and validate a YAML run config; errors name the bad field."""
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"run config {p} does not exist (see examples/run.yaml for a documented example).")
    raw = read_yaml(p, "run config")
    if not isinstance(raw, dict):
        raise ConfigError(f"run config {p} must be a mapping of fields (got {type(raw).__name__}).")
    raw.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(_format_validation(e, str(p))) from None


def _llm_client(cfg: RunConfig) -> Any:
    if cfg.grader != "llm":
        return None
    if cfg.llm is None:
        raise ConfigError("grader: llm needs an `llm:` section (base_url, model, api_key_env).")
    from .llm import LLMClient, LLMConfig

    return LLMClient(LLMConfig(**cfg.llm.model_dump()))


class Runner:
    """Executes the stages of a :class:`RunConfig`, loading models only when a stage needs them."""

    def __init__(self, cfg: RunConfig, *, console: Console | None = None, progress: bool = True):
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
            import torch

            from .pair import load_pair

            self._pair = load_pair(self.cfg.base, self.cfg.finetuned, dtype=getattr(torch, self.cfg.dtype),
                                   device=self.cfg.device)
        return self._pair

    @property
    def graders(self) -> Any:
        if self._graders is None:
            self._client = _llm_client(self.cfg)
            self._graders = graders_for(self.pair, self.cfg.grader, self._client)
        return self._graders

    # -- stages ----------------------------------------------------------------------------
    def stage_collect(self) -> str:
        res = collect(self.pair, self.layout, self.cfg.collect_config(), progress=self.progress)
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
        res = run_steer(self.pair, self.layout, self.graders, self.cfg.steering, progress=self.progress)
        return "; ".join(f"layer {r.layer} α " + ", ".join(f"p{t.position}={t.alpha:.2f}" for t in r.thresholds)
                         for r in res)

    def stage_report(self) -> str:
        from .report import render_report

        return f"wrote {render_report(self.layout.root)}"

    def _not_available(self, name: str) -> Callable[[], str]:
        def run() -> str:
            raise ConfigError(f"stage '{name}' is not part of this version of difflens yet; "
                              f"remove it from `stages:` (available: {', '.join(AVAILABLE_STAGES)}).")
        return run

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
            fn = getattr(self, f"stage_{stage}", None) or self._not_available(stage)
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


DEMO_STEER_POSITIONS = (2, 3)


def demo_config(organism: str = "cake_bake", out: Path | None = None, *, base: str = "smollm2-135m-instruct") -> RunConfig:
    """The embedded demo: small enough for a 2-core laptop, same method as the paper.

    Differences from the paper's defaults, for time only: N=2,000 collection samples, steering
    (threshold search + final samples) on positions 2 and 3, 40 new tokens, 10 of the 20 steering
    prompts with 2 samples each. Lens runs on all k=5 positions.
    """
    return RunConfig(
        out=out or Path("runs") / f"demo-{organism}",
        base=base,
        finetuned=f"organism:{organism}",
        organism=organism,
        datasets=["wiki"],
        samples=2000,
        batch_size=64,
        grader="offline",
        stages=["collect", "lens", "steer", "report"],
        # the paper's search on two positions, shorter generations: fits a 2-core laptop in minutes
        lens=LensSection(positions=None),
        steering=SteeringSection(positions=list(DEMO_STEER_POSITIONS), final_samples=2, max_new_tokens=40,
                                 prompts=SteeringSection().prompts[:10]),
    )
