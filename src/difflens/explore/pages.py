"""The explorer's pages: the single page (chat side by side, your text, and three views of the run that
the report's own rendering fills), the run's facts as JSON, and the HTML fragments of the views.

The Patchscope, Examples and Run views are the report's HTML (:mod:`difflens.report.html`,
:mod:`difflens.report.methods`, :mod:`difflens.report.evaluation`, :mod:`difflens.report.agent`), with
the report's stylesheet, not a second rendering: what the explorer shows of a run is what the report
shows, paged and on demand.
"""
from __future__ import annotations

import re
from importlib import resources
from typing import Any, Callable

from ..report.text import esc, hint_html
from .service import ModelService

__all__ = ["index_page", "login_page", "run_info", "static_file", "FRAGMENTS"]

EXAMPLES_PER_PAGE = 8
_STATIC = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8"}


def static_file(name: str) -> tuple[bytes | None, str]:
    """A file of the package's ``static/`` folder (JS and CSS only) and its media type."""
    if not re.fullmatch(r"[a-z0-9_-]+\.(js|css)", name):
        return None, ""
    path = resources.files("difflens.explore") / "static" / name
    if not path.is_file():
        return None, ""
    return path.read_bytes(), _STATIC["." + name.rsplit(".", 1)[1]]


def _pair_names(layout: Any, service: ModelService) -> tuple[str, str]:
    try:
        d = service.pair.describe()
        return str(d["base"]["spec"]), str(d["finetuned"]["spec"])
    except Exception:  # noqa: BLE001 - a stand-in pair in tests
        return "base", "finetuned"


def run_info(service: ModelService, layout: Any) -> dict[str, Any]:
    """What the page needs to build its controls: models, steering thresholds, β, limits, what is missing."""
    base, ft = _pair_names(layout, service)
    lim = service.limits
    return {"run": str(layout.root) if layout is not None else None, "base": base, "finetuned": ft,
            "layer": service.layer, "eta": service.eta, "dataset": service.dataset,
            "models": service.model_cards(),
            "steering": [{"position": j, "alpha": a} for j, (_, a) in sorted(service.steering.items())],
            "beta": service.beta, "beta_from_run": service.run_beta is not None,
            "notes": service.notes,
            "limits": {"max_tokens": lim.max_tokens, "max_text_chars": lim.max_text_chars,
                       "max_heatmap_tokens": lim.max_heatmap_tokens, "max_queue": lim.max_queue},
            "defaults": {"temperature": 1.0, "seed": 0, "max_tokens": min(64, lim.max_tokens)}}


def _css() -> str:
    from ..report.style import CSS

    return CSS


def index_page(service: ModelService, layout: Any) -> str:
    base, ft = _pair_names(layout, service)
    run = esc(layout.root) if layout is not None else ""
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>difflens explore · {esc(ft)} vs {esc(base)}</title>
<link rel="icon" href="data:,"><style>{_css()}</style><link rel="stylesheet" href="/static/explore.css"></head>
<body>
<header class="xbar"><div class="brand">difflens explore</div>
<div class="pairname"><b>{esc(ft)}</b> vs base <b>{esc(base)}</b> <span class="muted small">· {run} · layer {service.layer}</span></div>
<nav class="tabs" role="tablist">
<button role="tab" data-tab="chat" class="on">Chat</button>
<button role="tab" data-tab="text">Your text</button>
<button role="tab" data-tab="patchscope">Patchscope</button>
<button role="tab" data-tab="examples">Examples</button>
<button role="tab" data-tab="run">Run</button>
</nav></header>
<main class="xmain">
<section id="view-chat" class="view on">
<div class="chatctl card">
<textarea id="prompt" rows="2" placeholder="Ask every model the same thing… (Enter sends, Shift+Enter: new line)"></textarea>
<div class="ctlrow">
<label>temperature <input id="temperature" type="number" min="0" max="2" step="0.1" value="1"></label>
<label>seed <input id="seed" type="number" min="0" step="1" value="0"></label>
<label>max tokens <input id="max-tokens" type="number" min="1" max="{service.limits.max_tokens}" step="1" value="64"></label>
<button id="send" class="primary">Send</button>
<button id="reset">New conversation</button>
<span id="chat-status" class="muted small"></span>
</div></div>
<div id="columns" class="columns"></div>
</section>
<section id="view-text" class="view">
<div class="card">
<textarea id="text" rows="5" placeholder="Paste any text: each token is coloured by how much the finetune changes the prediction after it."></textarea>
<div class="ctlrow">
<label>colour by <select id="stat">
<option value="kl">KL(P_ft ‖ P_base), nats</option>
<option value="norm">‖h_ft − h_base‖ at layer {service.layer}</option>
<option value="logit_diff">logit difference of the next token (ft − base)</option>
<option value="cos">1 − cos(h_ft, h_base)</option>
<option value="ent">H(P_ft), the finetuned model alone (baseline)</option>
</select></label>
<button id="heat-go" class="primary">Show heat map</button>
<span id="heat-status" class="muted small"></span>
</div></div>
<div class="heatwrap"><div><div id="heat-legend" class="small"></div><div id="heat" class="xheat"></div></div>
<aside id="tokinfo" class="card small"><span class="muted">Hover or click a token: its values, and the tokens
whose probability the finetune raised and lowered there.</span></aside></div>
</section>
<section id="view-patchscope" class="view" data-fragment="patchscope"><p class="muted">loading…</p></section>
<section id="view-examples" class="view" data-fragment="examples"><p class="muted">loading…</p></section>
<section id="view-run" class="view" data-fragment="run"><p class="muted">loading…</p></section>
</main>
<script src="/static/explore.js"></script>
</body></html>
"""


def login_page() -> str:
    return f"""<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>difflens explore · token</title>
<style>{_css()}</style></head><body><main style="max-width:520px;margin:60px auto">
<h1>difflens explore</h1><p class="muted">This explorer needs its bearer token (the value of the variable
given to <code>--token-env</code>).</p>
<form method="post" action="/login" class="card"><label>token <input type="password" name="token" autofocus></label>
<button type="submit">Open</button></form></main></body></html>"""


# ---------------------------------------------------------------------------------------------------
# fragments: the report's rendering of the run, on demand
# ---------------------------------------------------------------------------------------------------
def _guard(fn: Callable[..., str]) -> Callable[..., str]:
    def run(*a: Any) -> str:
        try:
            return fn(*a)
        except Exception as e:  # noqa: BLE001 - one unreadable artifact must not break the explorer
            return f'<div class="error"><b>Could not render this view.</b> {esc(type(e).__name__)}: {esc(e)}</div>'
    return run


def _missing(text: str) -> str:
    return f'<div class="empty">{hint_html(text)}</div>'


@_guard
def patchscope_fragment(layout: Any, service: ModelService, params: dict[str, str]) -> str:
    """Every position × source (δ̄, its controls, the baselines) with every scale open, the grader's chosen
    scale and selected tokens marked: the report's Patchscope blocks."""
    from ..report.gather import gather
    from ..report.html import _patchscope_block

    _, slices = gather(layout)
    if not slices:
        return _missing(f"no collection yet: run `difflens collect ... --out {layout.root}` then "
                        f"`difflens lens {layout.root}`")
    out = ['<div class="card ctlrow"><span class="muted small">Each cell: the chosen scale λ with the grader\'s '
           'selected tokens highlighted; under “all scales” every scale of the grid (the chosen one shaded).</span>'
           '<button data-scales="open">open every scale</button><button data-scales="close">close them</button></div>']
    for s in slices:
        block = _patchscope_block(s)
        if not s.patch.ok and not s.patch.error:
            block = _missing(f"no Patchscope yet: run `difflens lens {layout.root}`")
        out.append(f'<section class="card"><h3>{esc(s.title)}</h3><div class="psgrid">{block}</div></section>')
    return "".join(out)


@_guard
def examples_fragment(layout: Any, service: ModelService, params: dict[str, str]) -> str:
    """The kl method's stored contexts ranked by one per-sample statistic, paged, each as the report's
    heat map; the noise control's store where it exists."""
    from ..methods.driver import open_examples
    from ..methods.evidence import available
    from ..report.methods import heatmap

    avail = available(layout)
    if "kl" not in avail:
        return _missing(f"no examples yet: run `difflens diff {layout.root} --methods kl` (the kl method stores "
                        "every sample's per-token values)")
    dataset = avail["kl"]
    control = params.get("control") or None
    if control not in (None, "noise"):
        control = None
    has_control = layout.method_result(dataset, "kl", "noise").exists()
    with open_examples(layout, dataset, control) as store:
        stats = store.ranked_stats()
        stat = params.get("stat") if params.get("stat") in stats else ("kl_max" if "kl_max" in stats else stats[0])
        n = store.count()
        pages = max(1, -(-n // EXAMPLES_PER_PAGE))
        try:
            page = min(max(0, int(params.get("page", "0"))), pages - 1)
        except ValueError:
            page = 0
        rows = store.top(stat, page * EXAMPLES_PER_PAGE, EXAMPLES_PER_PAGE)
    opts = "".join(f'<option value="{esc(s)}"{" selected" if s == stat else ""}>{esc(s.replace("_", " "))}</option>'
                   for s in stats)
    pair_opts = '<option value="">this pair</option>' + (
        f'<option value="noise"{" selected" if control else ""}>noise control pair</option>' if has_control else "")
    head = (f'<div class="card ctlrow examplesctl" data-page="{page}"><label>rank by <select name="stat">{opts}</select></label>'
            f'<label>pair <select name="control">{pair_opts}</select></label>'
            f'<button data-examples-page="{page - 1}"{" disabled" if page == 0 else ""}>◀ previous</button>'
            f'<span class="small">page <b>{page + 1}</b> of {pages} · {n} samples · {esc(dataset)}</span>'
            f'<button data-examples-page="{page + 1}"{" disabled" if page + 1 >= pages else ""}>next ▶</button></div>')
    base = stat.rsplit("_", 1)[0]
    cards = []
    for ex in rows:
        cards.append(f'<div class="card example"><div class="small"><b>#{ex.rank + 1}</b> · {esc(stat)} = '
                     f'<span class="numv">{ex.value:.4g}</span> · peak at window position {ex.position}</div>'
                     f'{heatmap(ex, base)}</div>')
    return head + ("".join(cards) or '<p class="muted">no samples on this page</p>')


@_guard
def run_fragment(layout: Any, service: ModelService, params: dict[str, str]) -> str:
    """The run: its header and stages, steering thresholds, the evaluation's numbers beside their
    baselines, the diffing methods compared, and the agent's transcripts — the report's sections."""
    from ..report.agent import agent_section
    from ..report.evaluation import evaluation_section
    from ..report.gather import gather, gather_methods
    from ..report.html import _header, _stage_overview, _steer_threshold_block
    from ..report.methods import methods_section

    manifest, slices = gather(layout)
    methods = gather_methods(layout)
    out = [f'<section class="card"><h2>Run</h2>{_header(layout, manifest)}</section>',
           f'<section class="card"><h2>Stages</h2>{_stage_overview(layout, slices, methods)}</section>']
    for s in slices:
        out.append(f'<section class="card"><h2>Steering · {esc(s.title)}</h2>{_steer_threshold_block(s)}</section>')
    if layout.evaluation().exists():
        out.append(f'<section class="card"><h2>Evaluation</h2>{evaluation_section(layout.evaluation())}</section>')
    else:
        out.append(f'<section class="card"><h2>Evaluation</h2>'
                   f'{_missing(f"no evaluation yet: run `difflens evaluate {layout.root}`")}</section>')
    if methods.shown:
        out.append(f'<section class="card"><h2>Diffing methods beside ADL</h2>{methods_section(methods)}</section>')
    if layout.agent().exists():
        out.append(f'<section class="card"><h2>Agent</h2>{agent_section(layout)}</section>')
    else:
        out.append(f'<section class="card"><h2>Agent</h2>'
                   f'{_missing(f"no agent transcripts yet: run `difflens agent {layout.root}`")}</section>')
    return "".join(out)


FRAGMENTS: dict[str, Callable[[Any, ModelService, dict[str, str]], str]] = {
    "patchscope": patchscope_fragment, "examples": examples_fragment, "run": run_fragment}
