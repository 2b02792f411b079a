"""Benchmark: what `difflens evaluate` costs, part by part, on a finished run (e.g. the demo's).

Copies the run's collect/lens/steer artifacts to a scratch directory (the run itself is not
touched), then times each evaluation part from scratch: token relevance, steering similarity,
causal effect, identification and leakage — at ``--quick`` size and, with ``--full``, at the
paper's size for the causal effect (64 texts × 128 tokens, 64 random directions).

    .venv/bin/python bench/evaluate.py [RUN=runs/demo-cake_bake] [--full]

Prints seconds per part and each part's share of the total.
"""
from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path


def main() -> None:
    from difflens.eval.evaluate import PARTS, EvalConfig, evaluate
    from difflens.eval.ftdata import resolve_ft_data
    from difflens.files import read_json
    from difflens.graders.relevance import OfflineRelevance
    from difflens.rundir.layout import RunLayout
    from difflens.models.pair import pair_from_run

    ap = argparse.ArgumentParser()
    ap.add_argument("run", nargs="?", default="runs/demo-cake_bake")
    ap.add_argument("--full", action="store_true", help="also time the causal effect at the paper's size")
    args = ap.parse_args()
    src = Path(args.run)
    if not (src / "manifest.json").exists():
        raise SystemExit(f"{src} is not a run directory: run `make demo` (or pass a run) first")
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        shutil.copytree(src, run, ignore=shutil.ignore_patterns("eval"))
        layout = RunLayout(run)
        ft = resolve_ft_data(read_json(layout.manifest))
        if ft is None:
            raise SystemExit("the run's finetuned model is not an organism: nothing to evaluate against")
        pair = pair_from_run(layout)
        grader = OfflineRelevance()
        sizes = [("quick", EvalConfig.quick())] + ([("full", EvalConfig())] if args.full else [])
        print(f"run {src} (copied), organism {ft.organism}, {len(ft.texts)} D_ft texts, offline graders")
        print(f"{'size':<7}{'part':<16}{'seconds':>9}{'share':>8}")
        for size, base_cfg in sizes:
            times = {}
            for part in PARTS:
                if size == "full" and part != "causal":
                    continue
                shutil.rmtree(layout.eval_dir() / "parts", ignore_errors=True)
                cfg = base_cfg.model_copy(update={"parts": [part]})
                t0 = time.perf_counter()
                evaluate(layout, ft, relevance_grader=grader, cfg=cfg, pair_loader=lambda: pair, progress=False)
                times[part] = time.perf_counter() - t0
            total = sum(times.values())
            for part, t in times.items():
                print(f"{size:<7}{part:<16}{t:>9.1f}{t / total:>8.0%}", flush=True)
            print(f"{size:<7}{'total':<16}{total:>9.1f}")


if __name__ == "__main__":
    main()
