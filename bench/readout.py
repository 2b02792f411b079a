"""Does the first readout show the organism? Trains (on first use), collects and lenses organisms with
the demo's settings, then scores δ̄'s Patchscope selection against the hand-labelled domain words,
before (coherence grader) and after (specificity grader), per organism and position.

    python bench/readout.py                          # design set + held-out set (labels file order)
    python bench/readout.py porcelain_shells         # some organisms
    python bench/readout.py --runs runs/readout --json readout.json

Runs land in ``runs/readout/<organism>`` (collect + lens only; reused when finished). The labels are
``tests/data/labels/domain_words.json`` (see :mod:`difflens.eval.readout`); the table is the one
``difflens graders readout RUN...`` prints.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LABELS = ROOT / "tests" / "data" / "labels" / "domain_words.json"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("organisms", nargs="*", help="organisms (default: every labelled one)")
    ap.add_argument("--runs", type=Path, default=Path("runs/readout"), help="where the runs go")
    ap.add_argument("--labels", type=Path, default=LABELS)
    ap.add_argument("--json", type=Path, default=None, help="write rows and summary here")
    args = ap.parse_args()

    from difflens.run.config import demo_config
    from difflens.run.pipeline import Runner

    organisms = args.organisms or list(json.loads(args.labels.read_text()))
    runs = []
    for org in organisms:
        t0 = time.time()
        cfg = demo_config(org, args.runs / org)
        cfg.stages = ["collect", "lens"]
        Runner(cfg).run()
        print(f"[readout] {org}: collect + lens ready ({time.time() - t0:.0f} s)", flush=True)
        runs.append(str(args.runs / org))
    from difflens.cli.graders import readout_cmd

    readout_cmd(runs=[Path(r) for r in runs], labels=args.labels, embedder=None, as_json=args.json)


if __name__ == "__main__":
    main()
