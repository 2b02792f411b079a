"""Reading a run directory into what the report shows: the manifest and, per dataset × layer,
each artifact (or why it is missing or unreadable)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..errors import DifflensError, RunDirError
from ..rundir.artifacts import Generation, LogitLensResult, PatchscopeResult, SteeringResult, load, load_jsonl
from ..rundir.layout import RunLayout, read_json

#: The command that produces each stage's artifacts; shown where a stage has not run.
STAGE_COMMANDS: dict[str, str] = {
    "collect": "difflens collect --base BASE --finetuned FT --out RUN",
    "lens": "difflens lens RUN",
    "steer": "difflens steer RUN",
    "evaluate": "difflens evaluate RUN",
}


def _anchor(*parts: Any) -> str:
    raw = "-".join(str(p) for p in parts)
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in raw)


@dataclass
class Loaded:
    """One artifact: the value, or why it is not there."""

    value: Any = None
    missing: bool = False
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.value is not None


def try_load(path: Path, loader: Callable[[Path], Any]) -> Loaded:
    if not path.exists():
        return Loaded(missing=True)
    try:
        return Loaded(value=loader(path))
    except DifflensError as e:
        return Loaded(error=str(e))
    except Exception as e:  # noqa: BLE001 - a report should render around one broken artifact
        return Loaded(error=f"{path}: {type(e).__name__}: {e}")


@dataclass
class Norms:
    delta: list[float]
    base: list[float]
    ft: list[float]
    eta_base: float
    eta_ft: float
    n: int


@dataclass
class Slice:
    """Everything known about one dataset × layer."""

    dataset: str
    layer: int
    relative: float | None
    norms: Loaded = field(default_factory=Loaded)
    lens: Loaded = field(default_factory=Loaded)
    patch: Loaded = field(default_factory=Loaded)
    steer: Loaded = field(default_factory=Loaded)
    gens: Loaded = field(default_factory=Loaded)

    @property
    def anchor(self) -> str:
        return _anchor("ds", self.dataset, "L", self.layer)

    @property
    def title(self) -> str:
        rel = f" ({self.relative:.0%} depth)" if self.relative is not None else ""
        return f"{self.dataset} · layer {self.layer}{rel}"


def load_norms(layout: RunLayout, dataset: str, layer: int) -> Norms:
    from ..adl.collect import load_collected  # torch import only when needed

    c = load_collected(layout, dataset, layer)
    return Norms(c.delta.double().norm(dim=-1).tolist(), c.base_mean.double().norm(dim=-1).tolist(),
                 c.ft_mean.double().norm(dim=-1).tolist(), float(c.eta_base), float(c.eta_ft), int(c.n))


def gather(layout: RunLayout) -> tuple[dict[str, Any], list[Slice]]:
    if not layout.manifest.exists():
        raise RunDirError(f"{layout.root} has no manifest.json; it is not a difflens run directory "
                          f"(run `difflens collect ... --out {layout.root}` first).")
    manifest = read_json(layout.manifest)
    layers = manifest.get("layers", [])
    slices = []
    for dataset in layout.collected_datasets():
        for entry in layers:
            li = int(entry["absolute"])
            s = Slice(dataset, li, entry.get("relative"))
            s.norms = try_load(layout.collect_file(dataset, li), lambda p, d=dataset, l=li: load_norms(layout, d, l))
            s.lens = try_load(layout.logit_lens(dataset, li), lambda p: load(LogitLensResult, p))
            s.patch = try_load(layout.patchscope(dataset, li), lambda p: load(PatchscopeResult, p))
            s.steer = try_load(layout.steering(dataset, li), lambda p: load(SteeringResult, p))
            s.gens = try_load(layout.steering_generations(dataset, li), lambda p: load_jsonl(Generation, p))
            slices.append(s)
    return manifest, slices
