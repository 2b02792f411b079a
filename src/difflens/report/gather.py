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
        models = _methods_pair(layout)  # a run of `difflens diff` only: the pair its results name
        if models is None:
            raise RunDirError(f"{layout.root} has no manifest.json and no method results; it is not a difflens run "
                              f"directory (run `difflens collect ... --out {layout.root}` or `difflens diff` first).")
        return {"models": models, "datasets": [], "layers": []}, []
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


def _methods_pair(layout: RunLayout) -> dict[str, Any] | None:
    """The model pair named by the first readable method result of a run that was never collected."""
    for path in sorted((layout.root / "methods").glob("*/*.json")):
        try:
            models = read_json(path).get("models")
        except RunDirError:
            continue
        if isinstance(models, dict) and "base" in models and "finetuned" in models:
            return models
    return None


# ---------------------------------------------------------------------------------------------
# the other diffing methods (difflens.methods): what each surfaces, and how it was graded
# ---------------------------------------------------------------------------------------------
#: The methods with a section of their own below ADL's, in the order they are shown.
METHOD_ORDER = ("mining", "kl", "amplify")
#: Ranked contexts the KL section shows: store statistic -> how many.
KL_CONTEXTS = {"kl_max": 10, "norm_max": 5, "ent_max": 5}


@dataclass
class MethodPart:
    """One computed method on one dataset: its evidence, its raw result (and its control's), and
    for KL the top contexts from the examples store (statistic -> list of Example)."""

    name: str
    dataset: str
    evidence: Loaded = field(default_factory=Loaded)
    result: Loaded = field(default_factory=Loaded)  # the result JSON as a dict
    control: Loaded = field(default_factory=Loaded)  # the noise control's result JSON
    contexts: Loaded = field(default_factory=Loaded)  # KL: {stat: [Example]} of the run's pair
    control_contexts: Loaded = field(default_factory=Loaded)  # KL: {"kl_max": [Example]} of the noise pair

    @property
    def anchor(self) -> str:
        return _anchor("method", self.name)


@dataclass
class MethodsData:
    parts: list[MethodPart] = field(default_factory=list)
    absent: dict[str, str] = field(default_factory=dict)  # method -> the command that computes it
    evals: dict[str, Any] = field(default_factory=dict)  # method -> MethodEval (RUN/eval/summary.json)
    summary: Any = None  # the EvalSummary, when readable
    eval_error: str | None = None
    adl: Loaded = field(default_factory=Loaded)  # ADL's Evidence (its steered samples beside amplified ones)

    @property
    def shown(self) -> bool:
        """Whether the report has a methods section: some method beside ADL computed, or graded."""
        return bool(self.parts) or bool(self.evals)


def _store_top(path: Path, fingerprint: str | None, wanted: dict[str, int]) -> dict[str, Any]:
    from ..methods.store import ExamplesStore

    with ExamplesStore.open(path, fingerprint=fingerprint) as store:
        have = store.ranked_stats()
        return {stat: store.top(stat, 0, n) for stat, n in wanted.items() if stat in have}


def gather_methods(layout: RunLayout) -> MethodsData:
    """Every diffing method beside ADL that the run has, read defensively (an unreadable artifact is
    an error in its place, never raised), with the evaluation's per-method block."""
    from ..methods.evidence import UNITS, adl_evidence, available, evidence

    data = MethodsData()
    try:
        avail = available(layout)
    except Exception:  # noqa: BLE001 - no method results, or a layout this version cannot read
        avail = {}
    for name in METHOD_ORDER:
        if name not in avail:
            data.absent[name] = UNITS[name].command.replace("RUN", str(layout.root))
            continue
        d = avail[name]
        part = MethodPart(name, d)
        part.evidence = try_load(layout.method_result(d, name), lambda p, n=name, d=d: evidence(layout, n, d))
        part.result = try_load(layout.method_result(d, name), read_json)
        part.control = try_load(layout.method_result(d, name, "noise"), read_json)
        if name == "kl" and part.result.ok:
            fp = part.result.value.get("fingerprint")
            part.contexts = try_load(layout.method_store(d, "kl"), lambda p: _store_top(p, fp, KL_CONTEXTS))
            if part.control.ok:
                cfp = part.control.value.get("fingerprint")
                part.control_contexts = try_load(layout.method_store(d, "kl", "noise"),
                                                 lambda p: _store_top(p, cfp, {"kl_max": 5}))
        data.parts.append(part)
    if "amplify" in avail and "adl" in avail:
        d = avail["adl"]
        data.adl = try_load(layout.root, lambda p: adl_evidence(layout, d))
    if layout.evaluation().exists():
        from ..eval.summary import EvalSummary

        try:
            data.summary = EvalSummary.model_validate_json(layout.evaluation().read_text(encoding="utf-8"))
            data.evals = dict(data.summary.methods)
        except Exception as e:  # noqa: BLE001 - the evaluation section shows the same error in place
            data.eval_error = f"{type(e).__name__}: {str(e)[:300]}"
    return data
