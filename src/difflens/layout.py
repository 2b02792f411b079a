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
      evaluate/...  agent/...              later stages
      stages/<stage>.json                   fingerprint + status of each finished stage
      report.html

No other module builds artifact paths: they ask a :class:`RunLayout`.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Iterable

from .errors import RunDirError


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


def atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def read_json(path: Path) -> Any:
    if not path.exists():
        raise RunDirError(f"{path} does not exist; run the stage that produces it first.")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise RunDirError(f"{path} is corrupt ({e}); delete it and rerun the stage.") from e


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

    @staticmethod
    def stage_key(stage: str, dataset: str | None = None, layer: int | None = None) -> str:
        """Name of a stage record, e.g. ``lens-wiki-15``."""
        return "-".join(str(x) for x in (stage, slug(dataset) if dataset else None, layer) if x is not None)

    # -- later stages ------------------------------------------------------------------
    def stage_dir(self, stage: str) -> Path:
        return self.root / stage

    def evaluation(self) -> Path:
        return self.root / "evaluate" / "evaluation.json"

    def agent(self) -> Path:
        return self.root / "agent" / "agent.json"

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

    def existing(self, paths: Iterable[Path]) -> bool:
        return all(p.exists() for p in paths)
