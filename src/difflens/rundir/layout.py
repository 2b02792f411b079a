"""The run directory: the one module that knows where every artifact lives.

::

    RUN/
      manifest.json                         collection manifest (models, data, layers, versions)
      collect/<dataset>/layer_<L>.safetensors   delta, base_mean, ft_mean  [K, d] float32
      collect/<dataset>/stats.json           N used, skipped, eta per layer, fingerprint
      collect/<dataset>/partial.pt           running sums of an interrupted collection
      lens/<dataset>/layer_<L>/logit_lens.json
      lens/<dataset>/layer_<L>/patchscope.json
      steer/<dataset>/layer_<L>/steering.json
      steer/<dataset>/layer_<L>/generations.jsonl
      methods/<dataset>/<method>.json       other diffing methods (difflens.methods): typed result
      methods/<dataset>/<method>.safetensors   its per-vocabulary arrays (diff mining)
      methods/<dataset>/<method>.sqlite     its example contexts, paged by a viewer (KL)
      methods/<dataset>/amplify.json, amplify.samples.jsonl   logit-difference amplification: β grid and samples
      methods/<dataset>/partial.pt, progress.json   running statistics of an interrupted pass
      methods/<dataset>/control-<name>/...  the same methods on a control pair (e.g. noise: base vs base + noise)
      evaluate/...  agent/...              later stages
      stages/<stage>.json                   fingerprint + status of each finished stage
      report.html

and, under ``$DIFFLENS_HOME`` (default ``~/.cache/difflens``), the caches that outlive a run::

    $DIFFLENS_HOME/
      models/<embedded-name>/                converted embedded models (fp32 safetensors)
      models/_gguf/                          assembled GGUF files of multi-part packages
      organisms/<name>/<base-slug>/<variant>/  trained organisms (weights or adapter + card.json)
      organisms/<name>/llm_docs/seed<N>/     LLM-generated finetuning documents or chats (resumable)
      organisms/<name>/teacher/<key>/        subliminal teacher samples (resumable)
      organisms/specs/                       user organism specs (YAML)
      llm_cache/                             LLM replies keyed by request
      kernels/<name>-<hash>/                 compiled CPU kernels (source, torch and CPU in the hash)

No other module builds artifact or cache paths: they ask a :class:`RunLayout` or :func:`home`.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any, Sequence

from ..errors import ConfigError
from ..files import atomic_write_text, read_json, write_json

__all__ = ["RunLayout", "Home", "home", "slug", "fingerprint", "atomic_write_text", "read_json", "write_json"]


def slug(name: str) -> str:
    """A filesystem-safe name for a dataset spec (paths get a short hash suffix)."""
    clean = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(name).stem if ("/" in name or os.sep in name) else name)
    clean = clean.strip("._") or "data"
    if clean != name:
        clean += "-" + hashlib.sha256(name.encode()).hexdigest()[:6]
    return clean


def fingerprint(obj: Any) -> str:
    """Stable hash of a JSON-serialisable description of inputs."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


class RunLayout:
    """Paths of one run directory."""

    def __init__(self, root: str | Path):
        self.root = Path(root).expanduser()

    def ensure(self) -> "RunLayout":
        self.root.mkdir(parents=True, exist_ok=True)
        return self

    # -- collection ----------------------------------------------------------------------
    @property
    def manifest(self) -> Path:
        return self.root / "manifest.json"

    def collect_dir(self, dataset: str) -> Path:
        return self.root / "collect" / slug(dataset)

    def collect_file(self, dataset: str, layer: int) -> Path:
        return self.collect_dir(dataset) / f"layer_{layer}.safetensors"

    def collect_stats(self, dataset: str) -> Path:
        return self.collect_dir(dataset) / "stats.json"

    def collect_partial(self, dataset: str) -> Path:
        return self.collect_dir(dataset) / "partial.pt"

    def targets(self, datasets: Sequence[str] | None = None,
                layers: Sequence[int] | None = None) -> list[tuple[str, int]]:
        """(dataset, absolute layer) pairs of the collection to work on: the requested ones (checked
        against the manifest) or all collected."""
        manifest = read_json(self.manifest)
        ds = list(datasets) if datasets else [d["name"] for d in manifest["datasets"]]
        ls = list(layers) if layers else [entry["absolute"] for entry in manifest["layers"]]
        known = {d["name"] for d in manifest["datasets"]}
        for d in ds:
            if d not in known:
                raise ConfigError(f"dataset '{d}' was not collected in {self.root} (collected: {sorted(known)}).")
        return [(d, li) for d in ds for li in ls]

    def collected_datasets(self) -> list[str]:
        """Dataset names (as the user gave them) with finished collections."""
        if not self.manifest.exists():
            return []
        return [d["name"] for d in read_json(self.manifest).get("datasets", [])]

    # -- lens and steering --------------------------------------------------------------
    def lens_dir(self, dataset: str, layer: int) -> Path:
        return self.root / "lens" / slug(dataset) / f"layer_{layer}"

    def logit_lens(self, dataset: str, layer: int) -> Path:
        return self.lens_dir(dataset, layer) / "logit_lens.json"

    def patchscope(self, dataset: str, layer: int) -> Path:
        return self.lens_dir(dataset, layer) / "patchscope.json"

    def steer_dir(self, dataset: str, layer: int) -> Path:
        return self.root / "steer" / slug(dataset) / f"layer_{layer}"

    def steering(self, dataset: str, layer: int) -> Path:
        return self.steer_dir(dataset, layer) / "steering.json"

    def steering_generations(self, dataset: str, layer: int) -> Path:
        return self.steer_dir(dataset, layer) / "generations.jsonl"

    def steering_partial(self, dataset: str, layer: int) -> Path:
        return self.steer_dir(dataset, layer) / "steering.partial.json"

    # -- other diffing methods (difflens.methods) ------------------------------------------
    def methods_dir(self, dataset: str, control: str | None = None) -> Path:
        """The diffing methods' results on ``dataset``; a control pair's (``control``, e.g. ``noise``:
        the base model against itself with small random weight noise) in ``control-<name>/`` below it."""
        d = self.root / "methods" / slug(dataset)
        return d / f"control-{slug(control)}" if control else d

    def method_result(self, dataset: str, method: str, control: str | None = None) -> Path:
        """A method's typed result (JSON, with the fingerprint of its inputs)."""
        return self.methods_dir(dataset, control) / f"{method}.json"

    def method_arrays(self, dataset: str, method: str, control: str | None = None) -> Path:
        """A method's full per-vocabulary (or per-position) arrays."""
        return self.methods_dir(dataset, control) / f"{method}.safetensors"

    def method_store(self, dataset: str, method: str, control: str | None = None) -> Path:
        """A method's SQLite store of example contexts."""
        return self.methods_dir(dataset, control) / f"{method}.sqlite"

    def method_samples(self, dataset: str, method: str, control: str | None = None) -> Path:
        """A generating method's samples (JSONL, one generation per line)."""
        return self.methods_dir(dataset, control) / f"{method}.samples.jsonl"

    def methods_partial(self, dataset: str, control: str | None = None) -> Path:
        """Running statistics of the methods' shared pass, checkpointed while it runs."""
        return self.methods_dir(dataset, control) / "partial.pt"

    def methods_progress(self, dataset: str, control: str | None = None) -> Path:
        """How far the shared pass has come (JSON, for people and monitors)."""
        return self.methods_dir(dataset, control) / "progress.json"

    @staticmethod
    def stage_key(stage: str, dataset: str | None = None, layer: int | None = None) -> str:
        """Name of a stage record, e.g. ``lens-wiki-15``."""
        return "-".join(str(x) for x in (stage, slug(dataset) if dataset else None, layer) if x is not None)

    # -- later stages ------------------------------------------------------------------
    def eval_dir(self) -> Path:
        return self.root / "eval"

    def evaluation(self) -> Path:
        """``eval/summary.json``: the evaluation summary (schema: :mod:`difflens.eval.summary`)."""
        return self.eval_dir() / "summary.json"

    def eval_part(self, dataset: str, layer: int, part: str) -> Path:
        """One finished evaluation part (with its fingerprint), reused while its inputs are unchanged."""
        return self.eval_dir() / "parts" / f"{slug(dataset)}-{layer}-{part}.json"

    def eval_part_partial(self, dataset: str, layer: int, part: str) -> Path:
        """What an interrupted evaluation part has finished so far (e.g. the causal effect's text
        batches), keyed by the part's fingerprint; removed when the part is done."""
        return self.eval_dir() / "parts" / f"{slug(dataset)}-{layer}-{part}.partial.json"

    def eval_cache(self) -> Path:
        """Per-run caches of evaluation inputs (frequent tokens of D_ft, …)."""
        return self.eval_dir() / "cache"

    def agent(self) -> Path:
        """``agent/summary.json``: per agent setting (kind × budget) the grades and their statistics."""
        return self.root / "agent" / "summary.json"

    def agent_episode(self, kind: str, budget: int, k: int) -> Path:
        """One agent episode (transcript, tool calls, budgets, usage, grades)."""
        return self.root / "agent" / f"{kind}-i{budget}" / f"run{k}.json"

    def llm_usage(self) -> Path:
        return self.root / "llm_usage.json"

    def report(self) -> Path:
        return self.root / "report.html"

    def run_config(self) -> Path:
        return self.root / "run_config.json"

    # -- stage bookkeeping -------------------------------------------------------------
    def stage_record(self, stage: str) -> Path:
        return self.root / "stages" / f"{stage}.json"

    def stage_done(self, stage: str, fp: str) -> bool:
        p = self.stage_record(stage)
        if not p.exists():
            return False
        try:
            rec = json.loads(p.read_text())
        except json.JSONDecodeError:
            return False
        return rec.get("fingerprint") == fp and rec.get("status") == "done"

    def mark_stage(self, stage: str, fp: str, status: str = "done", **info: Any) -> None:
        write_json(self.stage_record(stage), {"stage": stage, "fingerprint": fp, "status": status, **info})


class Home:
    """Paths of the cache under ``$DIFFLENS_HOME`` (directories are created on first use)."""

    def __init__(self, root: str | Path | None = None):
        if root is None:
            env = os.environ.get("DIFFLENS_HOME")
            root = Path(env).expanduser() if env else Path.home() / ".cache" / "difflens"
        self.root = Path(root)

    def _dir(self, *parts: str) -> Path:
        p = self.root.joinpath(*parts)
        p.mkdir(parents=True, exist_ok=True)
        return p

    # -- models ------------------------------------------------------------------------
    @property
    def models(self) -> Path:
        return self._dir("models")

    def embedded_model(self, name: str) -> Path:
        return self.models / name

    def assembled_gguf(self, filename: str) -> Path:
        return self._dir("models", "_gguf") / filename

    # -- compiled kernels --------------------------------------------------------------
    def kernel_build(self, name: str) -> Path:
        """Build directory of one compiled CPU kernel (``name`` carries its hash; created)."""
        return self._dir("kernels", name)

    # -- organisms ---------------------------------------------------------------------
    @property
    def organisms(self) -> Path:
        return self._dir("organisms")

    def organism(self, name: str, base_slug: str, variant: str) -> Path:
        """Directory of one trained organism variant (not created)."""
        return self.organisms / name / base_slug / variant

    def organism_cards(self) -> list[Path]:
        """``card.json`` of every trained organism, sorted."""
        return sorted(self.organisms.glob("*/*/*/card.json"))

    def llm_docs(self, name: str, seed: int) -> Path:
        """LLM-generated finetuning documents of an organism (not created)."""
        return self.organisms / name / "llm_docs" / f"seed{seed}"

    def teacher_samples(self, name: str, key: str) -> Path:
        """Samples of a subliminal organism's teacher, per base model and settings ``key`` (not created)."""
        return self.organisms / name / "teacher" / key

    @property
    def user_specs(self) -> Path:
        return self.organisms / "specs"

    # -- derived data ------------------------------------------------------------------
    @property
    def cache(self) -> Path:
        """Small derived data worth keeping across runs (e.g. common tokens per tokenizer)."""
        return self._dir("cache")

    # -- LLM ---------------------------------------------------------------------------
    @property
    def llm_cache(self) -> Path:
        return self._dir("llm_cache")


def home() -> Home:
    """The cache layout for the current ``$DIFFLENS_HOME`` (read each call, so tests can set it)."""
    return Home()
