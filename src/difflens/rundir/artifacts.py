"""Typed artifacts exchanged between stages (written as JSON at the paths :mod:`difflens.rundir.layout` names)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

from pydantic import BaseModel, SerializerFunctionWrapHandler, model_serializer

from ..errors import RunDirError
from ..files import atomic_write_text, jsonl_lines

# δ̄_j, h̄_base_j, h̄_ft_j, and the controls read beside them: δ̄_j read through the *base* model
# (Patchscope) and a random vector of δ̄_j's norm (seeded per layer and position).
Source = Literal["delta", "base", "ft", "delta_via_base", "random", "base_via_ft"]
SOURCES: tuple[Source, ...] = ("delta", "base", "ft")
# base_via_ft: h̄_base patched into the finetuned model (difflens's baseline before the authors'
# convention, where h̄_base is read by the base model, became the baseline)
CONTROLS: tuple[Source, ...] = ("delta_via_base", "random", "base_via_ft")


E = TypeVar("E")


def _entry(entries: list[E], source: Source, position: int) -> E:
    """The entry of ``entries`` for one source and position (KeyError if absent)."""
    for e in entries:
        if e.source == source and e.position == position:  # type: ignore[attr-defined]
            return e
    raise KeyError((source, position))


class TokenProb(BaseModel):
    token: str
    token_id: int
    prob: float


class LogitLensEntry(BaseModel):
    """Top tokens of softmax(W_U · final_norm(±v)) for one vector."""

    source: Source
    position: int
    top_positive: list[TokenProb]
    top_negative: list[TokenProb]


class LogitLensResult(BaseModel):
    dataset: str
    layer: int
    entries: list[LogitLensEntry]

    def get(self, source: Source, position: int) -> LogitLensEntry:
        return _entry(self.entries, source, position)


class PatchscopeScale(BaseModel):
    """Intersection-ranked tokens at one scale λ (top-16384 of all identity prompts, by mean prob)."""

    scale: float
    tokens: list[TokenProb]


class PatchscopeEntry(BaseModel):
    source: Source
    position: int
    scales: list[PatchscopeScale]  # every scale of the grid, top tokens only
    chosen_scale: float
    selected_tokens: list[str]  # the grader's semantically coherent subset of the chosen scale's top-20
    grader: str
    rationale: str = ""
    # per scale (aligned with ``scales``): the specificity grader's score of its top-20, whatever
    # grader chose; None in results written before it existed
    specificity: list[float] | None = None

    def more_specific(self, *, ratio: float = 2.0, margin: float = 1.0) -> tuple[float, float, float] | None:
        """``(scale, its specificity, the chosen scale's)`` when another scale's top-20 is far more
        specific than the chosen one (≥ ``ratio`` × and ≥ ``margin`` above it), else None."""
        if not self.specificity or len(self.specificity) != len(self.scales):
            return None
        chosen = next((x for sc, x in zip(self.scales, self.specificity)
                       if abs(sc.scale - self.chosen_scale) < 1e-9), 0.0)
        best_i = max(range(len(self.scales)), key=lambda i: (self.specificity[i], -i))
        best = self.specificity[best_i]
        if best >= ratio * chosen and best >= chosen + margin:
            return self.scales[best_i].scale, best, chosen
        return None

    def at(self, scale: float) -> PatchscopeScale:
        for s in self.scales:
            if abs(s.scale - scale) < 1e-9:
                return s
        raise KeyError(scale)

    def top_tokens(self, n: int = 20, scale: float | None = None) -> list[str]:
        """The top ``n`` tokens at ``scale`` (default: the chosen scale)."""
        return [t.token for t in self.at(self.chosen_scale if scale is None else scale).tokens[:n]]


class _QuietDefaults(BaseModel):
    """A result whose :data:`QUIET` fields are written only when they differ from their default, so a
    file written with the defaults is the same as one written before those fields existed."""

    QUIET: ClassVar[dict[str, Any]] = {}

    @model_serializer(mode="wrap")
    def _omit_quiet_defaults(self, handler: SerializerFunctionWrapHandler) -> Any:
        data = handler(self)
        if isinstance(data, dict):
            for key, default in self.QUIET.items():
                if key in data and data[key] == default:
                    del data[key]
        return data


class PatchscopeResult(_QuietDefaults):
    QUIET: ClassVar[dict[str, Any]] = {"precision": "float32"}

    dataset: str
    layer: int
    prompts: list[str]
    eta_ft: float
    entries: list[PatchscopeEntry]
    eta_base: float | None = None  # the scale unit of the `delta_via_base` control
    unpatched: list[TokenProb] = []  # the finetuned model on the identity prompts, nothing patched (control)
    precision: str = "float32"  # what the pair computed in (difflens.models.precision); written when not float32

    def get(self, source: Source, position: int) -> PatchscopeEntry:
        return _entry(self.entries, source, position)


class SearchStep(_QuietDefaults):
    """One tested α of a threshold search: ``n_coherent`` of the samples judged passed.

    ``n_graded``: how many of the ``n_samples`` samples the grader judged, where it stopped once the
    verdict was certain (None: all of them; files written before lazy judging have none)."""

    QUIET: ClassVar[dict[str, Any]] = {"n_graded": None}

    prompt: str
    alpha: float
    n_coherent: int
    n_samples: int
    coherent: bool
    n_graded: int | None = None


class SteeringThreshold(BaseModel):
    """The largest coherent steering strength α for one position (average over the search prompts)."""

    position: int
    alpha: float
    per_prompt: list[float]
    steps: list[SearchStep]
    generations_used: int
    grader_calls: int
    min_coherent: int | None = None  # samples of each tested α that had to pass (None: written before it was recorded)


class Generation(BaseModel):
    prompt: str
    position: int | None  # None: unsteered
    alpha: float
    sample: int
    text: str
    control: str | None = None  # "random": a random direction at the same α·η as δ̄ at `position`


class SteeringResult(_QuietDefaults):
    QUIET: ClassVar[dict[str, Any]] = {"generation_backend": "hf", "precision": "float32"}

    dataset: str
    layer: int
    eta_ft: float
    grader: str
    thresholds: list[SteeringThreshold]
    prompts: list[str]
    samples_per_prompt: int
    temperature: float
    # share of unsteered samples (threshold prompts, search temperature) the coherence grader passes
    unsteered_pass_rate: float | None = None
    min_coherent: int | None = None  # required coherent samples per tested α (steering.required_coherent)
    unsteered_pass_rates: list[float] | None = None  # per threshold prompt (None: written before they were)
    min_coherent_per_prompt: list[int] | None = None  # the bar each threshold prompt was held to
    max_new_tokens: int | None = None
    # who sampled the final steered / unsteered / control generations (the threshold search is always
    # the HF pair's): "hf" is the default and is left out of steering.json, so an HF run's file is
    # unchanged from before backends existed; any other backend ("vllm") is written
    generation_backend: str = "hf"
    # what the pair (the search, the grader's reference model, HF generations) computed in; written when not float32
    precision: str = "float32"

    def alpha(self, position: int) -> float:
        for t in self.thresholds:
            if t.position == position:
                return t.alpha
        raise KeyError(position)


M = TypeVar("M", bound=BaseModel)


def save(model: BaseModel, path: Path) -> None:
    atomic_write_text(path, model.model_dump_json(indent=2) + "\n")


def load(cls: type[M], path: Path) -> M:
    if not path.exists():
        raise RunDirError(f"{path} does not exist; run the stage that produces it first.")
    try:
        return cls.model_validate_json(path.read_text(encoding="utf-8"))
    except ValueError as e:
        raise RunDirError(f"{path} is corrupt or from an incompatible version ({e}); delete it and rerun.") from e


def save_jsonl(items: list[BaseModel], path: Path) -> None:
    atomic_write_text(path, "".join(i.model_dump_json() + "\n" for i in items))


def load_jsonl(cls: type[M], path: Path) -> list[M]:
    if not path.exists():
        raise RunDirError(f"{path} does not exist; run the stage that produces it first.")
    out = []
    for ln, line in enumerate(jsonl_lines(path.read_text(encoding="utf-8")), 1):
        if line.strip():
            try:
                out.append(cls.model_validate_json(line))
            except ValueError as e:
                raise RunDirError(f"{path}:{ln} is corrupt ({e}); delete it and rerun.") from e
    return out


# --- an experiment directory (difflens.run.experiment): one cell per organism variant -------------

class Cell(BaseModel):
    """One organism variant's numbers (None where a part did not run)."""

    organism: str
    mix_ratio: float = 0.0
    run: str
    variant: str = ""  # the trained organism's variant directory (recipe)
    relevance: dict[str, dict[str, float]] = {}  # source → method → max % over positions
    relevance_per_position: dict[str, list[float]] = {}  # source → Patchscope % per position
    similarity: dict[str, dict[str, float]] = {}  # key → {mean, std}
    causal: dict[str, Any] | None = None  # {"positions", "ft", "pt", "random_ft", "random_pt"}
    identification: dict[str, int] | None = None
    leakage: dict[str, float | None] | None = None
    ffa: dict[str, float] | None = None  # mixing: MCQ shift, margin shift, sign-test p
    alpha: dict[str, float] = {}  # steering threshold per position
    # experiment "methods": per diffing method (adl, mining, kl, amplify) the numbers of the comparison:
    # {"relevance", "relevance_mean", "baseline", "control": % (None: not computed / not applicable),
    #  "similarity": {"method", "baseline", "control": mean cosine to D_ft}, "rank", "n_candidates",
    #  "seconds", "forward_tokens", "title"}
    methods: dict[str, dict[str, Any]] = {}
    error: str | None = None


class ExperimentResult(BaseModel):
    name: str
    base: str
    quick: bool
    train: dict[str, Any] = {}
    cells: list[Cell] = []

    def find(self, organism: str, mix: float) -> Cell | None:
        return next((c for c in self.cells if c.organism == organism and abs(c.mix_ratio - mix) < 1e-9), None)
