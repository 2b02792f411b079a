"""The interpretability agent's tools: the OVERVIEW and the tool calls that
:data:`~.prompts.AGENT_SYSTEM_ADL` and :data:`~.prompts.AGENT_SYSTEM_BLACKBOX` document.

A :class:`Toolbox` reads one run directory (manifest, logit lens, Patchscope, steering) and answers
the agent's calls; the paid tools go through a :class:`ModelAccess` (the run's own pair in process:
:class:`InProcessModels`). Everything it returns is a JSON-serialisable dict; bad arguments raise
:class:`ToolError`, whose message goes back to the agent verbatim and names the valid choices.

What the agent sees, and what it does not:

- Only δ̄ (source ``delta``) is shown. Its baselines h̄_base / h̄_ft and the controls
  (``delta_via_base``, ``random``) are evaluation material, never evidence for the agent; neither
  are random-direction steering samples (``Generation.control`` set).
- OVERVIEW, ADL: per dataset and layer (manifest order) and per position, the top-``overview_k``
  logit-lens tokens, the top-``overview_k`` Patchscope tokens at the chosen scale and the grader's
  ``selected_tokens``; and for every steering prompt ONE steered and ONE unsteered sample (the
  lowest sample index). The steered sample comes from ONE position per slice, the one with the
  largest coherent α (ties: the lowest position) - the direction that tolerates the strongest
  push; ``alphas`` lists every position's α so the agent can steer others with
  ``generate_steered``. Texts are cut to ``cut`` characters (an ellipsis marks a cut).
- OVERVIEW, blackbox: exactly the unsteered part of the ADL overview: one unsteered sample per
  steering prompt (prompts of all slices, first occurrence), cut the same way.
- Other methods (``method`` mining, kl, amplify; all): the OVERVIEW is built from that method's
  :class:`~difflens.methods.evidence.Evidence` by :class:`~.views.MethodViews` (its tokens beside
  its baseline's and control's, KL's marked top contexts, amplified beside finetuned samples) and
  the free tools ``more_tokens``, ``top_contexts`` and ``amplified_samples`` page it; ``all``
  shows every method the run has, each in its labelled section (ADL's as above). A run without
  the method's results is refused when the toolbox is built (RunDirError naming the command).
  ``method`` adl (the default) is the ADL agent above, unchanged.
- Layers: an int is an absolute layer; a float in [0, 1] a relative depth, matched to the
  collected layer nearest to it (by the manifest's ``relative``) if that lies within one layer
  step (1 / num_layers), so both the nearest-layer and ``collect``'s floor convention resolve;
  an integral float above 1 (``15.0``) is read as absolute. ``dataset`` and ``layer`` may be
  omitted when the run has exactly one.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, Literal, Protocol, Sequence, runtime_checkable

from ..files import read_json
from ..rundir import artifacts as A
from ..rundir.layout import RunLayout, slug
from .args import Args as _Args
from .args import ToolError
from .args import cut as _cut
from .args import fmt_list as _fmt_list
from .args import is_int as _is_int
from .args import prob as _prob
from .prompts import AGENT_METHOD_CHOICES, AGENT_TOOLS_ADL, AGENT_TOOLS_BLACKBOX, agent_tools_for

__all__ = ["ToolError", "ModelAccess", "InProcessModels", "Toolbox", "MAX_K", "MAX_PROMPTS", "MAX_STEERED_N",
           "MAX_CACHED_N", "PAID_TOOLS"]

MAX_K = 100
"""Most tokens per position the detail tools return."""
MAX_PROMPTS = 20
"""Most prompts per ask_model / generate_steered call."""
MAX_STEERED_N = 10
"""Most new steered samples per prompt in one generate_steered call."""
MAX_CACHED_N = 100
"""Largest ``n`` get_steering_samples accepts (it returns what is cached, up to n)."""
DEFAULT_MAX_NEW_TOKENS = 128
"""Length of steered generations when the steering result does not record one."""
PAID_TOOLS = ("ask_model", "generate_steered")


# ============================================================================================
# Model access
# ============================================================================================


@runtime_checkable
class ModelAccess(Protocol):
    def ask(self, prompts: list[str]) -> dict[str, list[str]]:
        """``{"base": [...], "finetuned": [...]}``: one single-turn answer per prompt from each model."""
        ...

    def steered(self, dataset: str, layer: int, position: int, prompts: list[str], n: int) -> list[list[str]]:
        """``n`` new samples per prompt of the finetuned model steered with δ̄ at ``position``."""
        ...


class InProcessModels:
    """:class:`ModelAccess` with the run's own model pair, loaded on the first paid call.

    - ``ask``: both models answer every prompt once (one batched ``generate`` per model) at
      ``temperature`` and ``max_new_tokens``.
    - ``steered``: the finetuned model steered by ``α · η_ft · δ̂_j`` at the stored α of that position
      (:meth:`~difflens.rundir.artifacts.SteeringResult.alpha`), η and temperature of the steering
      result (new samples are drawn like the cached ones), length ``min(max_new_tokens, the
      steering stage's max_new_tokens or 128)``.
    - Call ``i`` (0-based, ``ask`` and ``steered`` counted together) samples with seed ``seed + i``:
      a session is reproducible and asking the same prompt twice gives a fresh sample.

    ``pair_loader`` is a zero-argument callable returning the pair (default: the pair named in the
    run's manifest, :func:`difflens.models.pair.pair_from_run`).
    """

    def __init__(self, layout: RunLayout, *, max_new_tokens: int = 200, temperature: float = 1.0, seed: int = 0,
                 pair_loader: Callable[[], Any] | None = None):
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        self.layout = layout
        self.max_new_tokens = int(max_new_tokens)
        self.temperature = float(temperature)
        self.seed = int(seed)
        self._loader = pair_loader
        self._pair: Any = None
        self._calls = 0
        self._steering: dict[tuple[str, int], A.SteeringResult] = {}
        self._delta: dict[tuple[str, int], Any] = {}

    @property
    def pair(self) -> Any:
        if self._pair is None:
            if self._loader is not None:
                self._pair = self._loader()
            else:
                from ..models.pair import pair_from_run

                self._pair = pair_from_run(self.layout)
        return self._pair

    def _next_seed(self) -> int:
        s = self.seed + self._calls
        self._calls += 1
        return s

    def _generate(self, prompts: list[str], **kw: Any) -> list[list[str]]:
        """Every generation of this access goes through here (:func:`difflens.adl.steering.generate` on the
        pair; :class:`difflens.backends.access.BackendModels` sends it to another backend)."""
        from ..adl.steering import generate

        return generate(self.pair, prompts, **kw)

    def ask(self, prompts: list[str]) -> dict[str, list[str]]:
        prompts = list(prompts)
        if not prompts:
            return {"base": [], "finetuned": []}
        kw: dict[str, Any] = dict(layer=0, direction=None, alpha=0.0, eta=1.0, n=1, temperature=self.temperature,
                                  max_new_tokens=self.max_new_tokens, seed=self._next_seed())
        base = self._generate(prompts, side="base", **kw)
        ft = self._generate(prompts, side="ft", **kw)
        return {"base": [b[0] for b in base], "finetuned": [f[0] for f in ft]}

    def steered(self, dataset: str, layer: int, position: int, prompts: list[str], n: int) -> list[list[str]]:
        from ..adl.collect import load_collected

        prompts = list(prompts)
        if not prompts or n < 1:
            return [[] for _ in prompts]
        key = (dataset, int(layer))
        if key not in self._steering:
            self._steering[key] = A.load(A.SteeringResult, self.layout.steering(dataset, layer))
        steer = self._steering[key]
        alpha = steer.alpha(position)  # KeyError: no threshold for this position
        if key not in self._delta:
            self._delta[key] = load_collected(self.layout, dataset, layer).delta
        delta = self._delta[key]
        if not 0 <= position < delta.shape[0]:
            raise KeyError(f"position {position} was not collected (k={delta.shape[0]})")
        length = min(self.max_new_tokens, steer.max_new_tokens or DEFAULT_MAX_NEW_TOKENS)
        return self._generate(prompts, layer=layer, direction=delta[position], alpha=alpha, eta=steer.eta_ft, n=n,
                              temperature=steer.temperature, max_new_tokens=length, seed=self._next_seed(), side="ft")


# ============================================================================================
# Argument checking
# ============================================================================================


_DESCRIPTIONS = {
    "get_logitlens_details": "Free. Top-k logit-lens tokens and probabilities of the mean activation difference "
                             "at each requested position.",
    "get_patchscope_details": "Free. Top-k Patchscope tokens with probabilities (at the chosen scale) per requested "
                              "position, and the grader's selected_tokens.",
    "get_steering_samples": "Free. Up to n cached steered and unsteered generations of the finetuned model per "
                            "prompt, for one steering position.",
    "ask_model": "Costs 1 model interaction per prompt. One single-turn answer per prompt from the base and from "
                 "the finetuned model.",
    "generate_steered": "Costs 1 model interaction per sample. n new steered generations per prompt, at the "
                        "steering strength precomputed for that position.",
    "more_tokens": "Free. The next n tokens of one token ranking of a diffing method (diff mining or KL), from "
                   "rank offset, with their statistics.",
    "top_contexts": "Free. n texts ranked by a per-sample statistic of the KL store (default kl_max), from rank "
                    "offset, with the token marked and every statistic's value at the mark.",
    "amplified_samples": "Free. n amplified samples from index offset, each beside the finetuned, base and "
                         "control sample for the same prompt.",
}
EVIDENCE_TOOL_NAMES = ("more_tokens", "top_contexts", "amplified_samples")


# ============================================================================================
# The toolbox
# ============================================================================================


class Toolbox:
    """The agent's tools over one run directory (see the module docstring for what is shown)."""

    def __init__(self, layout: RunLayout, models: ModelAccess | None, *, kind: Literal["adl", "blackbox"],
                 overview_k: int = 20, cut: int = 200, method: str = "adl"):
        if kind not in ("adl", "blackbox"):
            raise ValueError(f"kind must be 'adl' or 'blackbox', not {kind!r}")
        if method not in AGENT_METHOD_CHOICES:
            raise ValueError(f"method must be one of {', '.join(AGENT_METHOD_CHOICES)}, not {method!r}")
        if kind == "blackbox" and method != "adl":
            raise ValueError("the blackbox agent sees no diffing method: leave method at its default")
        if overview_k < 1 or cut < 1:
            raise ValueError("overview_k and cut must be >= 1")
        self.layout, self.models, self.kind = layout, models, kind
        self.overview_k, self.cut = int(overview_k), int(cut)
        self.method: str | None = method if kind == "adl" else None
        self.tools: tuple[str, ...] = AGENT_TOOLS_ADL if kind == "adl" else AGENT_TOOLS_BLACKBOX
        self.views: Any = None
        self.evidence: dict[str, str] = {}  # method -> dataset the overview shows (methods other than adl)
        manifest = read_json(layout.manifest)  # RunDirError if absent
        self.datasets: list[str] = [d["name"] for d in manifest.get("datasets", [])]
        self._layers: list[dict[str, Any]] = [
            {"absolute": int(entry["absolute"]), "relative": entry.get("relative"),
             "requested": entry.get("requested")} for entry in manifest.get("layers", [])]
        self.layers: list[int] = [entry["absolute"] for entry in self._layers]
        self._num_layers = (manifest.get("models") or {}).get("num_layers")
        self._cache: dict[tuple[str, str, int], Any] = {}
        if self.method not in (None, "adl"):
            from .views import MethodViews

            self.views = MethodViews(layout, self.method, overview_k=self.overview_k, cut_chars=self.cut)
            self.evidence = dict(self.views.datasets)  # RunDirError above when the run lacks the method
            self.tools = agent_tools_for(self.method, self.evidence)

    # -- artifacts --------------------------------------------------------------------------
    _WHAT = {"logit_lens": ("logit-lens", "lens"), "patchscope": ("Patchscope", "lens"),
             "steering": ("steering", "steer"), "generations": ("steering generations", "steer")}

    def _path(self, what: str, dataset: str, layer: int) -> Path:
        if what == "generations":
            return self.layout.steering_generations(dataset, layer)
        return getattr(self.layout, what)(dataset, layer)

    def _has(self, what: str, dataset: str, layer: int) -> bool:
        return self._path(what, dataset, layer).exists()

    def _load(self, what: str, dataset: str, layer: int) -> Any:
        key = (what, dataset, layer)
        if key not in self._cache:
            path = self._path(what, dataset, layer)
            if not path.exists():
                name, stage = self._WHAT[what]
                have = [f"{d!r} layer {li}" for d in self.datasets for li in self.layers if self._has(what, d, li)]
                raise ToolError(f"no {name} results for dataset {dataset!r} layer {layer} in this run (the {stage} "
                                f"stage has not produced them); available: {', '.join(have) or 'none'}")
            if what == "generations":
                self._cache[key] = A.load_jsonl(A.Generation, path)
            else:
                cls = {"logit_lens": A.LogitLensResult, "patchscope": A.PatchscopeResult,
                       "steering": A.SteeringResult}[what]
                self._cache[key] = A.load(cls, path)
        return self._cache[key]

    def _maybe(self, what: str, dataset: str, layer: int) -> Any:
        return self._load(what, dataset, layer) if self._has(what, dataset, layer) else None

    # -- dataset, layer, position -----------------------------------------------------------
    def _relative(self, layer: int) -> float | None:
        for entry in self._layers:
            if entry["absolute"] == layer:
                return entry["relative"]
        return None

    def _layer_choices(self) -> str:
        return ", ".join(f"{e['absolute']}" + (f" (relative {e['relative']})" if e["relative"] is not None else "")
                         for e in self._layers) or "none"

    def _dataset(self, value: Any) -> str:
        if value is None:
            if len(self.datasets) == 1:
                return self.datasets[0]
            raise ToolError(f"'dataset' is required: this run has datasets {_fmt_list(self.datasets) or 'none'}")
        if not isinstance(value, str):
            raise ToolError(f"'dataset' must be a string, one of: {_fmt_list(self.datasets)}")
        if value in self.datasets:
            return value
        v = value.strip().casefold()
        hits = [d for d in self.datasets
                if v in (d.casefold(), slug(d).casefold(), Path(d).stem.casefold(), Path(d).name.casefold())]
        if len(hits) == 1:
            return hits[0]
        raise ToolError(f"unknown dataset {value!r}; this run has: {_fmt_list(self.datasets) or 'none'}")

    def _step(self) -> float:
        """One layer step in relative depth (1 / num_layers; estimated from the manifest if absent)."""
        if self._num_layers:
            return 1.0 / int(self._num_layers)
        for e in self._layers:  # relative = absolute / num_layers
            if e["relative"] and e["absolute"] > 0:
                return float(e["relative"]) / e["absolute"]
        return 0.05

    def _layer(self, value: Any) -> int:
        if value is None:
            if len(self.layers) == 1:
                return self.layers[0]
            raise ToolError(f"'layer' is required: this run has layers {self._layer_choices()}")
        bad = (f"'layer' must be an integer (absolute layer) or a number in [0, 1] (relative depth); got {value!r}. "
               f"Collected layers: {self._layer_choices()}")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ToolError(bad)
        if isinstance(value, float) and value > 1 and value.is_integer():
            value = int(value)
        if _is_int(value):
            if value in self.layers:
                return int(value)
            raise ToolError(f"layer {value} was not collected in this run; collected layers: {self._layer_choices()}")
        if not 0.0 <= value <= 1.0:
            raise ToolError(bad)
        for e in self._layers:  # the depth the user asked `collect` for
            try:
                if e["requested"] is not None and abs(float(e["requested"]) - value) < 1e-9:
                    return e["absolute"]
            except ValueError:
                pass
        known = [e for e in self._layers if e["relative"] is not None]
        if known:
            best = min(known, key=lambda e: (abs(float(e["relative"]) - value), e["absolute"]))
            if abs(float(best["relative"]) - value) <= self._step() + 1e-6:
                return best["absolute"]
        raise ToolError(f"relative layer {value} matches no collected layer; collected layers: "
                        f"{self._layer_choices()} (an integer is an absolute layer, a float in [0, 1] a relative depth)")

    def _positions(self, args: _Args, valid: Sequence[int], where: str) -> list[int]:
        v = args.get("positions")
        if v is None:
            raise ToolError(f"{args.tool} needs 'positions': a list of token positions, from {_fmt_list(valid)}")
        if _is_int(v):
            v = [v]
        if not isinstance(v, list) or not v or not all(_is_int(p) for p in v):
            raise ToolError(f"'positions' of {args.tool} must be a non-empty list of integers from {_fmt_list(valid)}")
        bad = [p for p in v if p not in valid]
        if bad:
            raise ToolError(f"position(s) {_fmt_list(bad)} not available for {where}; choose from {_fmt_list(valid)}")
        return list(dict.fromkeys(v))

    def _position(self, args: _Args, valid: Sequence[int], where: str) -> int:
        v = args.get("position")
        if v is None:
            raise ToolError(f"{args.tool} needs 'position': one token position, from {_fmt_list(valid)}")
        if isinstance(v, float) and v.is_integer():
            v = int(v)
        if not _is_int(v):
            raise ToolError(f"'position' of {args.tool} must be one integer from {_fmt_list(valid)}, got {v!r}")
        if v not in valid:
            raise ToolError(f"position {v} not available for {where}; choose from {_fmt_list(valid)}")
        return v

    @staticmethod
    def _where(dataset: str, layer: int) -> str:
        return f"dataset {dataset!r} layer {layer}"

    # -- argument parsing per tool (shared by cost and call) --------------------------------
    _ALLOWED = {
        "get_logitlens_details": ("dataset", "layer", "positions", "k"),
        "get_patchscope_details": ("dataset", "layer", "positions", "k"),
        "get_steering_samples": ("dataset", "layer", "position", "prompts_subset", "n"),
        "ask_model": ("prompts",),
        "generate_steered": ("dataset", "layer", "position", "prompts", "n"),
        "more_tokens": ("method", "ranking", "offset", "n"),
        "top_contexts": ("stat", "offset", "n", "control"),
        "amplified_samples": ("offset", "n"),
    }

    def _check_tool(self, tool: Any) -> str:
        if not isinstance(tool, str) or tool not in self._ALLOWED:
            raise ToolError(f"unknown tool {tool!r}; available tools: {', '.join(self.tools)}")
        if tool not in self.tools:
            raise ToolError(f"tool {tool!r} is not available in this investigation; available tools: "
                            f"{', '.join(self.tools)}")
        return tool

    def _steer_positions(self, dataset: str, layer: int) -> list[int]:
        steer = self._load("steering", dataset, layer)
        return sorted(t.position for t in steer.thresholds)

    def _parse(self, tool: Any, args: Any) -> dict[str, Any]:
        tool = self._check_tool(tool)
        a = _Args(tool, args, self._ALLOWED[tool])
        out: dict[str, Any] = {}
        if tool == "ask_model":
            out["prompts"] = a.strings("prompts", most=MAX_PROMPTS)
            return out
        if tool in EVIDENCE_TOOL_NAMES:
            return self.views.parse(tool, a)
        dataset, layer = self._dataset(a.get("dataset")), self._layer(a.get("layer"))
        out.update(dataset=dataset, layer=layer)
        where = self._where(dataset, layer)
        if tool in ("get_logitlens_details", "get_patchscope_details"):
            res = self._load("logit_lens" if tool == "get_logitlens_details" else "patchscope", dataset, layer)
            valid = sorted({e.position for e in res.entries if e.source == "delta"})
            out["positions"] = self._positions(a, valid, where)
            out["k"] = a.integer("k", lo=1, hi=MAX_K, default=self.overview_k)
        elif tool == "get_steering_samples":
            out["position"] = self._position(a, self._steer_positions(dataset, layer), where)
            subset = a.strings("prompts_subset", most=10_000, required=False)
            out["prompts"] = None if subset is None else self._match_prompts(subset, dataset, layer)
            out["n"] = a.integer("n", lo=1, hi=MAX_CACHED_N, default=MAX_CACHED_N)
        else:  # generate_steered
            out["position"] = self._position(a, self._steer_positions(dataset, layer), where)
            out["prompts"] = a.strings("prompts", most=MAX_PROMPTS)
            out["n"] = a.integer("n", lo=1, hi=MAX_STEERED_N)
        return out

    def _cached_prompts(self, dataset: str, layer: int) -> list[str]:
        steer = self._load("steering", dataset, layer)
        gens = self._maybe("generations", dataset, layer) or []
        return list(dict.fromkeys(list(steer.prompts) + [g.prompt for g in gens]))

    def _match_prompts(self, subset: list[str], dataset: str, layer: int) -> list[str]:
        known = self._cached_prompts(dataset, layer)
        folded = {p.strip().casefold(): p for p in known}
        out, bad = [], []
        for s in subset:
            p = s if s in known else folded.get(s.strip().casefold())
            if p is None:
                bad.append(s)
            else:
                out.append(p)
        if bad:
            listing = "\n".join(f"- {p}" for p in known)
            raise ToolError(f"prompt(s) without cached steering samples: {_fmt_list(bad)}. Use null for all prompts, "
                            f"or copy prompts exactly from this list:\n{listing}")
        return list(dict.fromkeys(out))

    # -- public API -------------------------------------------------------------------------
    def cost(self, tool: str, args: dict) -> int:
        """Model interactions the call would spend (validates the arguments first)."""
        p = self._parse(tool, args)
        if tool == "ask_model":
            return len(p["prompts"])
        if tool == "generate_steered":
            return len(p["prompts"]) * p["n"]
        return 0

    def call(self, tool: str, args: dict) -> dict:
        """Run one tool call; a JSON-serialisable dict."""
        p = self._parse(tool, args)
        if tool in PAID_TOOLS and self.models is None:
            raise ToolError(f"{tool} is not available: this investigation has no access to the models")
        if tool in EVIDENCE_TOOL_NAMES:
            return self.views.call(tool, p)
        return getattr(self, f"_{tool}")(**p)

    def specs(self) -> list[dict]:
        """OpenAI-style function-tool specs of this kind's tools."""
        ds_req = [] if len(self.datasets) == 1 else ["dataset"]
        ly_req = [] if len(self.layers) == 1 else ["layer"]
        dataset = {"type": "string", "description": f"dataset name, one of: {_fmt_list(self.datasets)}"}
        layer = {"type": "number", "description": f"an integer is an absolute 0-based layer, a float in [0, 1] a "
                                                  f"fraction of the depth; collected: {self._layer_choices()}"}
        k = {"type": "integer", "minimum": 1, "maximum": MAX_K,
             "description": f"tokens per position (default {self.overview_k})"}
        positions = {"type": "array", "items": {"type": "integer", "minimum": 0}, "minItems": 1,
                     "description": "0-based token positions"}
        position = {"type": "integer", "minimum": 0, "description": "0-based token position of the steering vector"}
        prompts = {"type": "array", "items": {"type": "string", "minLength": 1}, "minItems": 1,
                   "maxItems": MAX_PROMPTS, "description": f"1 to {MAX_PROMPTS} prompts"}
        params = {
            "get_logitlens_details": ({"dataset": dataset, "layer": layer, "positions": positions, "k": k},
                                      ds_req + ly_req + ["positions"]),
            "get_patchscope_details": ({"dataset": dataset, "layer": layer, "positions": positions, "k": k},
                                       ds_req + ly_req + ["positions"]),
            "get_steering_samples": ({"dataset": dataset, "layer": layer, "position": position,
                                      "prompts_subset": {"anyOf": [{"type": "array", "items": {"type": "string"}},
                                                                   {"type": "null"}],
                                                         "description": "cached steering prompts to show (null: all)"},
                                      "n": {"type": "integer", "minimum": 1, "maximum": MAX_CACHED_N,
                                            "description": "most samples of each kind per prompt (default: all)"}},
                                     ds_req + ly_req + ["position"]),
            "ask_model": ({"prompts": prompts}, ["prompts"]),
            "generate_steered": ({"dataset": dataset, "layer": layer, "position": position, "prompts": prompts,
                                  "n": {"type": "integer", "minimum": 1, "maximum": MAX_STEERED_N,
                                        "description": f"new samples per prompt (1 to {MAX_STEERED_N})"}},
                                 ds_req + ly_req + ["position", "prompts", "n"]),
        }
        for tool in EVIDENCE_TOOL_NAMES:
            if tool in self.tools:
                params[tool] = self.views.specs(tool)
        out = []
        for tool in self.tools:
            props, required = params[tool]
            out.append({"type": "function", "function": {
                "name": tool, "description": _DESCRIPTIONS[tool],
                "parameters": {"type": "object", "properties": props, "required": required,
                               "additionalProperties": False}}})
        return out

    # -- overview ---------------------------------------------------------------------------
    def overview(self) -> dict:
        """The OVERVIEW of the first user message (see the module docstring)."""
        if self.kind == "blackbox":
            return self._overview_blackbox()
        if self.method == "all":
            sections: dict[str, Any] = {}
            for m in self.evidence:
                sections[m] = ({"method": "adl", "title": "Activation Difference Lens", **self._overview_adl()}
                               if m == "adl" else self.views.overview(m))
            out: dict[str, Any] = {"methods": sections}
            lacking = self.views.not_computed()
            if lacking:
                out["not_computed"] = lacking
            return out
        if self.method != "adl":
            return self.views.overview(self.method)
        return self._overview_adl()

    def _overview_adl(self) -> dict:
        slices = [self._slice(d, li) for d in self.datasets for li in self.layers]
        return {"datasets": list(self.datasets),
                "layers": [{"absolute": e["absolute"], "relative": e["relative"]} for e in self._layers],
                "slices": slices}

    def _unsteered(self, gens: Sequence[A.Generation]) -> dict[str, str]:
        """The lowest-sample unsteered text per prompt."""
        out: dict[str, tuple[int, str]] = {}
        for g in gens:
            if g.position is None and g.control is None and (g.prompt not in out or g.sample < out[g.prompt][0]):
                out[g.prompt] = (g.sample, g.text)
        return {p: t for p, (_, t) in out.items()}

    def _overview_blackbox(self) -> dict:
        rows: dict[str, str] = {}
        for d in self.datasets:
            for li in self.layers:
                steer = self._maybe("steering", d, li)
                gens = self._maybe("generations", d, li) or []
                un = self._unsteered(gens)
                order = list(dict.fromkeys((list(steer.prompts) if steer else []) + [g.prompt for g in gens]))
                for p in order:
                    if p in un and p not in rows:
                        rows[p] = _cut(un[p], self.cut)
        return {"generations": [{"prompt": p, "text": t} for p, t in rows.items()]}

    def _slice(self, dataset: str, layer: int) -> dict[str, Any]:
        k = self.overview_k
        out: dict[str, Any] = {"dataset": dataset, "layer": layer, "relative_layer": self._relative(layer)}
        missing = []
        ll = self._maybe("logit_lens", dataset, layer)
        ps = self._maybe("patchscope", dataset, layer)
        if ll is None:
            missing.append("logit_lens")
        if ps is None:
            missing.append("patchscope")
        ll_by = {e.position: e for e in ll.entries if e.source == "delta"} if ll else {}
        ps_by = {e.position: e for e in ps.entries if e.source == "delta"} if ps else {}
        rows = []
        for j in sorted(set(ll_by) | set(ps_by)):
            row: dict[str, Any] = {"position": j}
            if j in ll_by:
                row["logit_lens"] = [t.token for t in ll_by[j].top_positive[:k]]
            if j in ps_by:
                e = ps_by[j]
                row["patchscope"] = [t.token for t in e.at(e.chosen_scale).tokens[:k]]
                row["selected_tokens"] = list(e.selected_tokens)
                flag = e.more_specific()
                if flag is not None:  # the grader's scale is far less specific than another one
                    row["more_specific_scale"] = {"scale": flag[0], "patchscope": e.top_tokens(k, scale=flag[0])}
            rows.append(row)
        out["positions"] = rows
        steer = self._maybe("steering", dataset, layer)
        gens = self._maybe("generations", dataset, layer)
        if steer is None or gens is None:
            missing.append("steering")
        else:
            out["steering"] = self._steering_overview(steer, gens)
        if missing:
            out["missing"] = missing
        return out

    def _steering_overview(self, steer: A.SteeringResult, gens: Sequence[A.Generation]) -> dict[str, Any]:
        alphas = {t.position: t.alpha for t in steer.thresholds}
        steered: dict[int, dict[str, tuple[int, str]]] = {}
        for g in gens:
            if g.position is not None and g.control is None and g.position in alphas:
                per = steered.setdefault(g.position, {})
                if g.prompt not in per or g.sample < per[g.prompt][0]:
                    per[g.prompt] = (g.sample, g.text)
        best = min(steered, key=lambda j: (-alphas[j], j)) if steered else None
        un = self._unsteered(gens)
        chosen = {p: t for p, (_, t) in steered.get(best, {}).items()} if best is not None else {}
        samples = []
        for p in dict.fromkeys(list(steer.prompts) + [g.prompt for g in gens]):
            if p in chosen or p in un:
                row = {"prompt": p}
                if p in chosen:
                    row["steered"] = _cut(chosen[p], self.cut)
                if p in un:
                    row["unsteered"] = _cut(un[p], self.cut)
                samples.append(row)
        return {"position": best, "alpha": alphas.get(best) if best is not None else None,
                "alphas": {str(j): a for j, a in sorted(alphas.items())}, "samples": samples}

    # -- tools ------------------------------------------------------------------------------
    def _head(self, dataset: str, layer: int) -> dict[str, Any]:
        return {"dataset": dataset, "layer": layer, "relative_layer": self._relative(layer)}

    def _get_logitlens_details(self, dataset: str, layer: int, positions: list[int], k: int) -> dict:
        res = self._load("logit_lens", dataset, layer)
        rows = [{"position": j, "tokens": [{"token": t.token, "prob": _prob(t.prob)}
                                           for t in res.get("delta", j).top_positive[:k]]} for j in positions]
        return {**self._head(dataset, layer), "k": k, "positions": rows}

    def _get_patchscope_details(self, dataset: str, layer: int, positions: list[int], k: int) -> dict:
        res = self._load("patchscope", dataset, layer)
        rows = []
        for j in positions:
            e = res.get("delta", j)
            rows.append({"position": j, "scale": e.chosen_scale,
                         "tokens": [{"token": t.token, "prob": _prob(t.prob)} for t in e.at(e.chosen_scale).tokens[:k]],
                         "selected_tokens": list(e.selected_tokens)})
        return {**self._head(dataset, layer), "k": k, "positions": rows}

    def _get_steering_samples(self, dataset: str, layer: int, position: int, prompts: list[str] | None,
                              n: int) -> dict:
        steer = self._load("steering", dataset, layer)
        gens = self._maybe("generations", dataset, layer) or []
        steered: dict[str, list[tuple[int, str]]] = {}
        unsteered: dict[str, list[tuple[int, str]]] = {}
        for g in gens:
            if g.control is not None:
                continue
            if g.position == position:
                steered.setdefault(g.prompt, []).append((g.sample, g.text))
            elif g.position is None:
                unsteered.setdefault(g.prompt, []).append((g.sample, g.text))
        order = prompts if prompts is not None else [p for p in self._cached_prompts(dataset, layer)
                                                      if p in steered or p in unsteered]
        rows = [{"prompt": p, "steered": [t for _, t in sorted(steered.get(p, []))[:n]],
                 "unsteered": [t for _, t in sorted(unsteered.get(p, []))[:n]]} for p in order]
        return {**self._head(dataset, layer), "position": position, "alpha": steer.alpha(position), "samples": rows}

    def _ask_model(self, prompts: list[str]) -> dict:
        assert self.models is not None
        res = self.models.ask(list(prompts))
        base, ft = list(res["base"]), list(res["finetuned"])
        if len(base) != len(prompts) or len(ft) != len(prompts):
            raise RuntimeError(f"model access returned {len(base)} base and {len(ft)} finetuned answers "
                               f"for {len(prompts)} prompts")
        return {"base": base, "finetuned": ft}

    def _generate_steered(self, dataset: str, layer: int, position: int, prompts: list[str], n: int) -> dict:
        assert self.models is not None
        steer = self._load("steering", dataset, layer)
        texts = self.models.steered(dataset, layer, position, list(prompts), n)
        if len(texts) != len(prompts):
            raise RuntimeError(f"model access returned {len(texts)} sample lists for {len(prompts)} prompts")
        return {**self._head(dataset, layer), "position": position, "alpha": steer.alpha(position),
                "generations": [{"prompt": p, "samples": list(ts)} for p, ts in zip(prompts, texts)]}
