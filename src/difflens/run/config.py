"""Run configs: the validated YAML that drives `difflens run`, and the embedded demo's config."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..adl.collect import CollectConfig
from ..adl.steering import SteeringConfig
from ..errors import ConfigError
from ..eval.evaluate import EvalConfig
from ..files import read_yaml
from .stages import LensConfig

Stage = Literal["collect", "lens", "steer", "evaluate", "report"]
STAGES: tuple[str, ...] = ("collect", "lens", "steer", "evaluate", "report")


class LLMSection(BaseModel):
    model_config = ConfigDict(extra="forbid")
    base_url: str = "https://openrouter.ai/api/v1"
    model: str = "openai/gpt-5-mini"
    api_key_env: str = "OPENROUTER_API_KEY"


class LensSection(LensConfig):
    model_config = ConfigDict(extra="forbid")


class SteeringSection(SteeringConfig):
    model_config = ConfigDict(extra="forbid")


class EvaluateSection(EvalConfig):
    model_config = ConfigDict(extra="forbid")


class RunConfig(BaseModel):
    """Everything one run needs. Unknown fields are refused (typos must not pass silently)."""

    model_config = ConfigDict(extra="forbid")

    out: Path
    base: str = "smollm2-135m-instruct"
    finetuned: str
    organism: str | None = Field(None, description="organism name: ground truth for evaluation/agent stages")
    ft_data: str | None = Field(None, description="D_ft file for evaluation (default: the organism's data)")
    description: str | None = Field(None, description="the true finetuning objective (default: the organism's)")
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
    stages: list[Stage] = Field(default_factory=lambda: list(STAGES))
    lens: LensSection = Field(default_factory=LensSection)
    steering: SteeringSection = Field(default_factory=SteeringSection)
    evaluate: EvaluateSection = Field(default_factory=EvaluateSection)

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


DEMO_STEER_POSITIONS = (2, 3)


def demo_config(organism: str = "cake_bake", out: Path | None = None, *, base: str = "smollm2-135m-instruct") -> RunConfig:
    """The embedded demo: small enough for a 2-core laptop, same method as the paper.

    Differences from the paper's defaults, for time only: N=2,000 collection samples, steering
    (threshold search + final samples) on positions 2 and 3, 40 new tokens, 10 of the 20 steering
    prompts with 2 samples each. Lens runs on all k=5 positions. Evaluation at ``EvalConfig.quick``
    size (16 texts and 16 random directions for the causal effect).
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
        stages=["collect", "lens", "steer", "evaluate", "report"],
        # the paper's search on two positions, shorter generations: fits a 2-core laptop in minutes
        lens=LensSection(positions=None),
        steering=SteeringSection(positions=list(DEMO_STEER_POSITIONS), final_samples=2, max_new_tokens=40,
                                 prompts=SteeringSection().prompts[:10]),
        evaluate=EvaluateSection(**EvalConfig.quick().model_dump()),
    )
