"""Run configs: the validated YAML that drives `difflens run`, and the embedded demo's config."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ..adl.collect import CollectConfig
from ..adl.steering import SteeringConfig
from ..errors import ConfigError
from ..eval.evaluate import EvalConfig
from ..files import read_yaml
from ..models.placement import Placement, make_placement
from ..models.precision import Precision
from .stages import LensConfig

Stage = Literal["collect", "lens", "steer", "methods", "evaluate", "report"]
STAGES: tuple[str, ...] = ("collect", "lens", "steer", "methods", "evaluate", "report")
Method = Literal["adl", "mining", "kl", "amplify"]
ADL_STAGES = ("collect", "lens", "steer")  # the stages of the Activation Difference Lens


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


class DiffSection(BaseModel):
    """The diffing methods beside ADL (``methods`` stage; :mod:`difflens.methods`): one shared pass of
    N samples × T tokens for mining and KL, amplification on the steering prompts, and the same
    methods on a control pair (``control: noise``: the base model against itself with random weight
    noise of the finetune's per-tensor size) so every figure has what it looks like without a
    narrow finetune."""

    model_config = ConfigDict(extra="forbid")
    dataset: str | None = None  # default: the run's first dataset
    samples: int = Field(2000, ge=1)
    tokens: int = Field(64, ge=1)
    batch_size: int = Field(8, ge=1)
    top_k: int = Field(100, ge=1)
    lens_layer: float | int | None = None  # mining through the logit lens at this layer (None: final logits)
    kl_layer: float | int = 0.5
    skip_positions: int = Field(1, ge=0)
    control: Literal["none", "noise"] = "noise"
    control_scale: Literal["matched"] | float = "matched"
    control_seed: int = 0
    amplify: dict[str, Any] = Field(default_factory=dict)  # AmplifyConfig fields (betas, samples, ...)


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
    batch_size: int = Field(256, ge=1)  # collect's samples per forward (speed and memory; δ̄ is the same)
    seed: int = 0
    # where and in which precision the pair is loaded (difflens.models.placement / .precision);
    # part of no stage fingerprint: placement never changes results
    device: str = "cpu"
    dtype: Precision = "auto"
    device_map: str | dict[str, int | str] | None = Field(
        None, description="auto, balanced, balanced_low_0, sequential, a JSON file or a mapping module → device")
    max_memory: str | dict[str, str] | None = Field(None, description="per-device caps, '0=20GiB,cpu=60GiB'")
    base_device: str | None = Field(None, description="the base model's device or device map only")
    ft_device: str | None = Field(None, description="the finetuned model's device or device map only")
    # who samples the steering stage's final steered / unsteered / control generations
    # (difflens.backends): hf, the run's own pair (the reference), or vllm (pip install 'difflens[vllm]',
    # GPU). The threshold search always runs on the HF pair, which stays loaded beside vLLM's engine.
    # A backend other than hf is part of the steer stage's fingerprint; its options, like placement, are not.
    generation_backend: Literal["hf", "vllm"] = "hf"
    tensor_parallel_size: int = Field(1, ge=1, description="vllm: GPUs each vLLM engine is sharded over")
    vllm_gpu_memory_utilization: float | None = Field(
        None, gt=0, le=1, description="vllm: share of GPU memory its engine may take (default 0.85; leave room for "
                                      "the HF pair on the same GPU)")
    grader: Literal["offline", "llm"] = "offline"
    llm: LLMSection | None = None
    stages: list[Stage] = Field(default_factory=lambda: list(STAGES))
    # which diffing methods the run computes: adl (collect → lens → steer) and any of mining, kl,
    # amplify (the methods stage); a stage of a method not chosen is skipped
    methods: list[Method] = Field(default_factory=lambda: ["adl"], min_length=1)
    diff: DiffSection = Field(default_factory=DiffSection)
    lens: LensSection = Field(default_factory=LensSection)
    steering: SteeringSection = Field(default_factory=SteeringSection)
    evaluate: EvaluateSection = Field(default_factory=EvaluateSection)

    @model_validator(mode="after")
    def _placement(self) -> "RunConfig":
        self.placement()  # ConfigError (bad map file, malformed max_memory) → a validation error
        return self

    @model_validator(mode="after")
    def _vllm_options(self) -> "RunConfig":
        if self.generation_backend != "vllm":
            given = [k for k in ("tensor_parallel_size", "vllm_gpu_memory_utilization")
                     if getattr(self, k) != type(self).model_fields[k].default]
            if given:
                raise ValueError(f"{', '.join(given)} apply to generation_backend: vllm only "
                                 f"(generation_backend is {self.generation_backend}).")
        return self

    def check_generation_backend(self) -> None:
        """ConfigError naming ``pip install 'difflens[vllm]'`` when the steer stage needs vLLM and it is
        not installed (call before any model loads)."""
        if "steer" in self.stages and self.generation_backend != "hf":
            from ..backends import check_backend

            check_backend(self.generation_backend)

    def backend_options(self) -> dict[str, Any]:
        """The options of :func:`difflens.backends.backend_for_run` (none for hf)."""
        if self.generation_backend == "hf":
            return {}
        opts: dict[str, Any] = {"tensor_parallel_size": self.tensor_parallel_size}
        if self.vllm_gpu_memory_utilization is not None:
            opts["gpu_memory_utilization"] = self.vllm_gpu_memory_utilization
        return opts

    def placement(self) -> Placement:
        """The validated placement of the pair (device-map files read, sizes parsed)."""
        try:
            return make_placement(device=self.device, device_map=self.device_map, max_memory=self.max_memory,
                                  base_device=self.base_device, ft_device=self.ft_device)
        except ConfigError as e:
            raise ValueError(str(e)) from None

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


def with_overrides(cfg: RunConfig, source: str = "(command-line options)", **overrides: Any) -> RunConfig:
    """``cfg`` with ``overrides`` (None values ignored), validated again; errors name the bad field."""
    given = {k: v for k, v in overrides.items() if v is not None}
    if not given:
        return cfg
    try:
        return RunConfig.model_validate({**cfg.model_dump(), **given})
    except ValidationError as e:
        raise ConfigError(_format_validation(e, source)) from None


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
        grader="offline",
        stages=["collect", "lens", "steer", "evaluate", "report"],
        # the paper's search on two positions, shorter generations: fits a 2-core laptop in minutes
        lens=LensSection(positions=None),
        steering=SteeringSection(positions=list(DEMO_STEER_POSITIONS), final_samples=2, max_new_tokens=40,
                                 prompts=SteeringSection().prompts[:10]),
        evaluate=EvaluateSection(**EvalConfig.quick().model_dump()),
    )
