"""The run report: one self-contained HTML file summarising a run directory.

``render_report(run_dir)`` reads every artifact that exists (through :mod:`difflens.rundir.layout`,
:mod:`difflens.rundir.artifacts` and :func:`difflens.adl.collect.load_collected`) and writes
``report.html``: a header with models, data and layers; a chart of ‖δ̄_j‖ per position against the
activation norm η; per dataset × layer the Patchscope and logit-lens tokens of δ̄_j next to the
baselines h̄_base_j and h̄_ft_j; steering thresholds and steered-vs-unsteered samples; and, where a run
has them, evaluation and agent results. The diffing methods beside ADL (diff mining, per-token KL and
activation differences, logit-difference amplification) get a section each: ranked tokens with the
relevance grader's verdicts beside their baseline's and control's, KL statistics, histograms and top
contexts (a heat map; the peak token in a ``<mark>``), amplified samples beside unamplified and
δ̄-steered ones, and a comparison table of all methods when the run was evaluated. A lens or steering stage that has not run shows the command
that produces it. The file needs no network: inline CSS, inline SVG charts, no scripts, no external
fonts or images. All model text is HTML-escaped and tokens show their whitespace (``␣`` space,
``↵`` newline, ``⇥`` tab).

``summary_lines(run_dir)`` gives the same headline in a few plain-text lines for the terminal.

Modules: :mod:`.gather` reads the run directory, :mod:`.html` builds the page from it (with
:mod:`.charts` for the SVG charts and :mod:`.style` for the CSS; :mod:`.methods` renders the diffing
methods' sections, :mod:`.evaluation` the evaluation's), :mod:`.summary` writes the terminal
lines, and :mod:`.text` holds the escaping and number/token formatting they share.
"""
from __future__ import annotations

from .gather import STAGE_COMMANDS
from .html import build_html, render_report
from .summary import summary_lines
from .text import show_token

__all__ = ["render_report", "build_html", "summary_lines", "show_token", "STAGE_COMMANDS"]
