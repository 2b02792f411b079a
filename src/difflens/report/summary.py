"""The run's headline as a few plain-text lines for the terminal (no markup)."""
from __future__ import annotations

from pathlib import Path

from ..rundir.artifacts import Generation, PatchscopeResult
from ..rundir.layout import RunLayout
from .gather import STAGE_COMMANDS, Norms, gather
from .text import fmt, fmt_scale, show_token


def _clip(text: str, n: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 1] + "…"


def summary_lines(run_dir: str | Path, *, max_chars: int = 200) -> list[str]:
    """A short plain-text summary (no markup): per dataset × layer the grader-selected Patchscope
    tokens of δ̄_j per position, and one steered sample next to an unsteered one.

    Print with markup disabled (model text may contain brackets).
    """
    layout = RunLayout(run_dir)
    manifest, slices = gather(layout)
    models = manifest.get("models", {})
    lines = [f"run {layout.root}: {(models.get('finetuned') or {}).get('spec', '?')} vs base "
             f"{(models.get('base') or {}).get('spec', '?')}"]
    for s in slices:
        lines.append(f"{s.title}:")
        if s.norms.ok:
            nm: Norms = s.norms.value
            lines.append("  ‖δ̄_j‖: " + ", ".join(fmt(x, 3) for x in nm.delta) + f"  (η_ft {fmt(nm.eta_ft, 3)})")
        if s.patch.ok:
            res: PatchscopeResult = s.patch.value
            for e in sorted((e for e in res.entries if e.source == "delta"), key=lambda e: e.position):
                toks = e.selected_tokens or e.top_tokens(8)
                tag = "" if e.selected_tokens else " (none selected; top tokens)"
                lines.append(f"  Patchscope δ̄ j={e.position} λ={fmt_scale(e.chosen_scale)}: "
                             + ", ".join(show_token(t) for t in toks[:12]) + tag)
                flag = e.more_specific()
                if flag is not None:
                    lines.append(f"    ⚠ λ={fmt_scale(flag[0])} is far more specific: "
                                 + ", ".join(show_token(t) for t in e.top_tokens(12, scale=flag[0])))
        else:
            lines.append(f"  Patchscope: not run ({STAGE_COMMANDS['lens']})")
        if s.gens.ok and s.gens.value:
            gens: list[Generation] = s.gens.value
            st = [g for g in gens if g.position is not None and g.control is None]
            if s.steer.ok and st:
                # the position with the largest coherent α that has samples
                al = {t.position: t.alpha for t in s.steer.value.thresholds}
                best = max({g.position for g in st}, key=lambda j: (al.get(j, 0.0), -j))
                st = [g for g in st if g.position == best]
            if st:
                g = st[0]
                lines.append(f"  prompt: {_clip(g.prompt, max_chars)}")
                lines.append(f"  steered (j={g.position}, α={fmt(g.alpha, 3)}): {_clip(g.text, max_chars)}")
                un = [u for u in gens if u.position is None and u.prompt == g.prompt]
                if un:
                    lines.append(f"  unsteered: {_clip(un[0].text, max_chars)}")
        else:
            lines.append(f"  steering: not run ({STAGE_COMMANDS['steer']})")
    if layout.evaluation().exists():
        from ..eval.summary import EvalSummary
        from .evaluation import headline

        try:
            lines += ["evaluation:"] + ["  " + h for h in
                                        headline(EvalSummary.model_validate_json(layout.evaluation().read_text()))]
        except ValueError as e:
            lines.append(f"evaluation: unreadable ({e})")
    else:
        lines.append(f"evaluation: not run ({STAGE_COMMANDS['evaluate']})")
    return lines
