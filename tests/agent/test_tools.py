"""The agent's tools: the OVERVIEW (δ̄ only, no controls, texts cut), the free tools on known
artifacts, layer / dataset resolution, argument errors the agent can act on, costs, function specs,
and the in-process model access on a tiny real pair."""
from __future__ import annotations

import json

import pytest

from difflens.adl.steering import generate
from difflens.agent.prompts import AGENT_TOOLS_ADL, AGENT_TOOLS_BLACKBOX
from difflens.agent.tools import InProcessModels, ToolError, Toolbox
from difflens.rundir.artifacts import (
    Generation,
    LogitLensEntry,
    LogitLensResult,
    PatchscopeEntry,
    PatchscopeResult,
    PatchscopeScale,
    SteeringResult,
    SteeringThreshold,
    TokenProb,
    save,
    save_jsonl,
)
from difflens.rundir.layout import RunLayout, write_json

K, LAYER, DATASET = 3, 15, "wiki"
ALPHAS = {0: 1.0, 1: 3.0, 2: 2.0}  # position 1 has the largest α: the overview's steered samples
PROMPTS = ["Tell me a story.", "Plan a picnic for four friends."]
LONG = "word " * 100  # 500 characters
CONTROL_SOURCES = ("base", "ft", "delta_via_base", "random")


def _tp(tokens: list[str]) -> list[TokenProb]:
    return [TokenProb(token=t, token_id=100 + i, prob=0.5 / (i + 1)) for i, t in enumerate(tokens)]


def ll_tokens(j: int) -> list[str]:
    return [f" ll{j}_{i}" for i in range(30)]


def ps_tokens(j: int) -> list[str]:
    return [f" ps{j}_{i}" for i in range(30)]


def write_run(root, datasets=(DATASET,)) -> RunLayout:
    """A run directory with a hand-written manifest and real lens / steering artifacts.

    Control sources carry tokens named after the source (``CTRL_random``), control generations
    the text ``RANDOMCONTROL``: neither may reach the agent."""
    layout = RunLayout(root).ensure()
    write_json(layout.manifest, {
        "models": {"base": {"spec": "base-model"}, "finetuned": {"spec": "ft-model"}, "num_layers": 30},
        "datasets": [{"name": d} for d in datasets],
        "positions": K,
        "layers": [{"absolute": LAYER, "relative": 0.5, "requested": "0.5"}],
    })
    lens, ps = [], []
    for src in ("delta",) + CONTROL_SOURCES:
        for j in range(K):
            toks = ll_tokens(j) if src == "delta" else [f" CTRL_{src}"] * 5
            pstoks = ps_tokens(j) if src == "delta" else [f" CTRL_{src}"] * 5
            lens.append(LogitLensEntry(source=src, position=j, top_positive=_tp(toks),
                                       top_negative=_tp([" NEGATIVE"])))
            scales = [PatchscopeScale(scale=1.0, tokens=_tp([" wrong_scale"] * 30)),
                      PatchscopeScale(scale=2.0, tokens=_tp(pstoks))]
            sel = [f" ps{j}_0", f" ps{j}_2"] if src == "delta" else [f" SEL_{src}"]
            ps.append(PatchscopeEntry(source=src, position=j, scales=scales, chosen_scale=2.0, selected_tokens=sel,
                                      grader="embedding"))
    for d in datasets:
        save(LogitLensResult(dataset=d, layer=LAYER, entries=lens), layout.logit_lens(d, LAYER))
        save(PatchscopeResult(dataset=d, layer=LAYER, prompts=["man -> man\n?"], eta_ft=10.0, entries=ps),
             layout.patchscope(d, LAYER))
        th = [SteeringThreshold(position=j, alpha=a, per_prompt=[a], steps=[], generations_used=0, grader_calls=0)
              for j, a in ALPHAS.items()]
        save(SteeringResult(dataset=d, layer=LAYER, eta_ft=10.0, grader="offline", thresholds=th, prompts=PROMPTS,
                            samples_per_prompt=2, temperature=1.1), layout.steering(d, LAYER))
        gens = []
        for pi, p in enumerate(PROMPTS):
            for s in (1, 0):  # sample 1 first: the overview must still pick sample 0
                un = LONG if (pi == 0 and s == 0) else f"unsteered {pi} s{s}"
                gens.append(Generation(prompt=p, position=None, alpha=0.0, sample=s, text=un))
                for j, a in ALPHAS.items():
                    gens.append(Generation(prompt=p, position=j, alpha=a, sample=s, text=f"steered p{j} {pi} s{s}"))
                    gens.append(Generation(prompt=p, position=j, alpha=a, sample=s, text=f"RANDOMCONTROL p{j}",
                                           control="random"))
        save_jsonl(gens, layout.steering_generations(d, LAYER))
    return layout


class FakeModels:
    """A ModelAccess that records every call and answers with recognisable texts."""

    def __init__(self):
        self.calls: list[tuple] = []

    def ask(self, prompts):
        self.calls.append(("ask", list(prompts)))
        return {"base": [f"base: {p}" for p in prompts], "finetuned": [f"ft: {p}" for p in prompts]}

    def steered(self, dataset, layer, position, prompts, n):
        self.calls.append(("steered", dataset, layer, position, list(prompts), n))
        return [[f"steer {position} {p} #{i}" for i in range(n)] for p in prompts]


@pytest.fixture
def run(tmp_path):
    return write_run(tmp_path / "run")


@pytest.fixture
def models():
    return FakeModels()


@pytest.fixture
def adl(run, models):
    return Toolbox(run, models, kind="adl", overview_k=5, cut=50)


# --------------------------------------------------------------------------------------------
# Overview
# --------------------------------------------------------------------------------------------


def test_overview_adl_shows_delta_tokens_and_one_steered_and_unsteered_sample(adl):
    ov = adl.overview()
    text = json.dumps(ov)
    assert ov["datasets"] == [DATASET] and ov["layers"] == [{"absolute": LAYER, "relative": 0.5}]
    (sl,) = ov["slices"]
    assert (sl["dataset"], sl["layer"], sl["relative_layer"]) == (DATASET, LAYER, 0.5)
    assert "missing" not in sl
    assert [r["position"] for r in sl["positions"]] == [0, 1, 2]
    for j, row in enumerate(sl["positions"]):
        assert row["logit_lens"] == ll_tokens(j)[:5]
        assert row["patchscope"] == ps_tokens(j)[:5]  # the chosen scale (2.0), not scale 1.0
        assert row["selected_tokens"] == [f" ps{j}_0", f" ps{j}_2"]
    # controls and baselines are never shown
    for marker in ("CTRL_", "SEL_", "RANDOMCONTROL", "wrong_scale", "NEGATIVE"):
        assert marker not in text
    st = sl["steering"]
    assert (st["position"], st["alpha"]) == (1, 3.0)
    assert st["alphas"] == {"0": 1.0, "1": 3.0, "2": 2.0}
    assert [s["prompt"] for s in st["samples"]] == PROMPTS
    first, second = st["samples"]
    assert first["steered"] == "steered p1 0 s0" and second["steered"] == "steered p1 1 s0"
    assert second["unsteered"] == "unsteered 1 s0"
    # the 500-character unsteered sample is cut to exactly 50 characters, the cut marked
    assert len(first["unsteered"]) == 50 and first["unsteered"].endswith("…")
    assert first["unsteered"][:-1] == LONG[:49].rstrip()
    json.loads(text)


def test_overview_blackbox_has_only_unsteered_generations(run):
    ov = Toolbox(run, FakeModels(), kind="blackbox", cut=30).overview()
    assert list(ov) == ["generations"]
    assert [g["prompt"] for g in ov["generations"]] == PROMPTS
    assert ov["generations"][1]["text"] == "unsteered 1 s0"
    assert len(ov["generations"][0]["text"]) == 30 and ov["generations"][0]["text"].endswith("…")
    text = json.dumps(ov)
    for marker in ("steered p", " ll", " ps", "selected", "CTRL_", "RANDOMCONTROL", "alpha"):
        assert marker not in text


def test_overview_notes_missing_stages(run):
    run.patchscope(DATASET, LAYER).unlink()
    tb = Toolbox(run, None, kind="adl", overview_k=3)
    (sl,) = tb.overview()["slices"]
    assert sl["missing"] == ["patchscope"]
    assert sl["positions"][2] == {"position": 2, "logit_lens": ll_tokens(2)[:3]}
    assert sl["steering"]["position"] == 1
    with pytest.raises(ToolError, match="no Patchscope results for dataset 'wiki' layer 15.*available: none"):
        tb.call("get_patchscope_details", {"positions": [0], "k": 3})


# --------------------------------------------------------------------------------------------
# Free tools
# --------------------------------------------------------------------------------------------


def test_logitlens_details(adl):
    out = adl.call("get_logitlens_details", {"dataset": DATASET, "layer": LAYER, "positions": [2, 0], "k": 3})
    assert (out["dataset"], out["layer"], out["relative_layer"], out["k"]) == (DATASET, LAYER, 0.5, 3)
    assert [r["position"] for r in out["positions"]] == [2, 0]
    assert out["positions"][0]["tokens"] == [{"token": " ll2_0", "prob": 0.5}, {"token": " ll2_1", "prob": 0.25},
                                             {"token": " ll2_2", "prob": 0.1667}]
    # dataset and layer omitted (one of each), k defaults to overview_k, duplicates dropped
    out = adl.call("get_logitlens_details", {"positions": [1, 1]})
    assert [t["token"] for t in out["positions"][0]["tokens"]] == ll_tokens(1)[:5] and len(out["positions"]) == 1
    # k above what is stored returns what is stored
    out = adl.call("get_logitlens_details", {"positions": [0], "k": 100})
    assert len(out["positions"][0]["tokens"]) == 30
    json.dumps(out)


def test_patchscope_details(adl):
    out = adl.call("get_patchscope_details", {"layer": 0.5, "positions": [1], "k": 4})
    (row,) = out["positions"]
    assert row["position"] == 1 and row["scale"] == 2.0
    assert [t["token"] for t in row["tokens"]] == ps_tokens(1)[:4]
    assert [t["prob"] for t in row["tokens"]] == [0.5, 0.25, 0.1667, 0.125]
    assert row["selected_tokens"] == [" ps1_0", " ps1_2"]
    assert "CTRL_" not in json.dumps(out)


def test_steering_samples(adl):
    out = adl.call("get_steering_samples", {"position": 2, "prompts_subset": [PROMPTS[1]], "n": 1})
    assert (out["position"], out["alpha"]) == (2, 2.0)
    assert out["samples"] == [{"prompt": PROMPTS[1], "steered": ["steered p2 1 s0"], "unsteered": ["unsteered 1 s0"]}]
    # all prompts, every cached sample (sorted by sample), never the random-direction control
    out = adl.call("get_steering_samples", {"dataset": DATASET, "layer": LAYER, "position": 0,
                                            "prompts_subset": None})
    assert [s["prompt"] for s in out["samples"]] == PROMPTS
    assert out["samples"][1]["steered"] == ["steered p0 1 s0", "steered p0 1 s1"]
    assert out["samples"][0]["unsteered"] == [LONG, "unsteered 0 s1"]  # detail tools do not cut
    assert "RANDOMCONTROL" not in json.dumps(out)
    # a prompt matched up to case and surrounding space
    out = adl.call("get_steering_samples", {"position": 1, "prompts_subset": ["  tell me a STORY. "], "n": 1})
    assert out["samples"][0]["prompt"] == PROMPTS[0] and out["samples"][0]["steered"] == ["steered p1 0 s0"]


@pytest.mark.parametrize("layer", [15, 15.0, 0.5, 0.49, 0.52])
def test_layer_resolution(adl, layer):
    assert adl.call("get_logitlens_details", {"layer": layer, "positions": [0], "k": 1})["layer"] == LAYER


@pytest.mark.parametrize("layer, message", [
    (0.3, "relative layer 0.3 matches no collected layer; collected layers: 15 (relative 0.5)"),
    (14, "layer 14 was not collected in this run; collected layers: 15 (relative 0.5)"),
    (1.5, "or a number in [0, 1] (relative depth); got 1.5"),
    ("15", "must be an integer"),
    (True, "must be an integer"),
])
def test_layer_errors(adl, layer, message):
    with pytest.raises(ToolError) as e:
        adl.call("get_logitlens_details", {"layer": layer, "positions": [0]})
    assert message in str(e.value)


# --------------------------------------------------------------------------------------------
# Paid tools and costs
# --------------------------------------------------------------------------------------------


def test_paid_tools_go_through_model_access(adl, models):
    assert adl.cost("ask_model", {"prompts": ["a", "b", "c"]}) == 3
    assert adl.cost("generate_steered", {"position": 2, "prompts": ["a", "b"], "n": 4}) == 8
    assert adl.cost("get_logitlens_details", {"positions": [0]}) == 0
    assert adl.cost("get_patchscope_details", {"positions": [0], "k": 3}) == 0
    assert adl.cost("get_steering_samples", {"position": 0}) == 0
    assert models.calls == []  # costing runs nothing
    out = adl.call("ask_model", {"prompts": ["How hot is an oven?", "Hi"]})
    assert out == {"base": ["base: How hot is an oven?", "base: Hi"], "finetuned": ["ft: How hot is an oven?", "ft: Hi"]}
    out = adl.call("generate_steered", {"dataset": DATASET, "layer": 0.5, "position": 2, "prompts": ["Bake?"], "n": 2})
    assert models.calls[-1] == ("steered", DATASET, LAYER, 2, ["Bake?"], 2)
    assert (out["position"], out["alpha"], out["layer"]) == (2, 2.0, LAYER)
    assert out["generations"] == [{"prompt": "Bake?", "samples": ["steer 2 Bake? #0", "steer 2 Bake? #1"]}]
    json.dumps(out)


def test_blackbox_costs_and_ask(run, models):
    tb = Toolbox(run, models, kind="blackbox")
    assert tb.tools == AGENT_TOOLS_BLACKBOX
    assert tb.cost("ask_model", {"prompts": ["x"] * 20}) == 20
    assert tb.call("ask_model", {"prompts": "single prompt"})["finetuned"] == ["ft: single prompt"]


def test_no_model_access(run):
    tb = Toolbox(run, None, kind="adl")
    assert tb.cost("ask_model", {"prompts": ["a"]}) == 1
    with pytest.raises(ToolError, match="no access to the models"):
        tb.call("ask_model", {"prompts": ["a"]})


P = {"positions": [0]}


@pytest.mark.parametrize("kind, tool, args, messages", [
    ("adl", "nope", {}, ["unknown tool 'nope'", "get_logitlens_details", "generate_steered"]),
    ("blackbox", "get_patchscope_details", P, ["'get_patchscope_details' is not available", "tools: ask_model"]),
    ("blackbox", "generate_steered", {"position": 0, "prompts": ["a"], "n": 1}, ["not available"]),
    ("adl", "get_steering_samples", {"n": 1}, ["needs 'position'", "from 0, 1, 2"]),
    ("adl", "generate_steered", {"position": 5, "prompts": ["a"], "n": 1}, ["position 5 not available", "0, 1, 2"]),
    ("adl", "get_logitlens_details", {"dataset": "books", "positions": [0]}, ["unknown dataset 'books'", "'wiki'"]),
    ("adl", "get_logitlens_details", {"positions": [7]}, ["position(s) 7 not available", "choose from 0, 1, 2"]),
    ("adl", "get_logitlens_details", {}, ["needs 'positions'"]),
    ("adl", "get_patchscope_details", {"positions": ["0"]}, ["list of integers"]),
    ("adl", "ask_model", {"prompts": ["x"], "temperature": 0}, ["unknown argument(s) for ask_model: 'temperature'",
                                                              "allowed arguments: prompts"]),
    ("adl", "get_patchscope_details", {"positions": [0], "k": 101}, ["'k'", "from 1 to 100"]),
    ("adl", "get_patchscope_details", {"positions": [0], "k": 0}, ["from 1 to 100"]),
    ("adl", "ask_model", {"prompts": ["q"] * 21}, ["21 entries", "at most 20"]),
    ("adl", "ask_model", {"prompts": []}, ["1 to 20 non-empty strings"]),
    ("adl", "ask_model", {"prompts": ["ok", "  "]}, ["non-empty strings"]),
    ("adl", "ask_model", {}, ["needs 'prompts'"]),
    ("adl", "ask_model", ["not", "a", "dict"], ["must be a JSON object"]),
    ("adl", "generate_steered", {"position": 0, "prompts": ["a"]}, ["needs 'n'", "from 1 to 10"]),
    ("adl", "generate_steered", {"position": 0, "prompts": ["a"], "n": 11}, ["from 1 to 10"]),
    ("adl", "get_steering_samples", {"position": 0, "prompts_subset": ["Write a poem."]},
     ["'Write a poem.'", "- Tell me a story.", "- Plan a picnic for four friends."]),
])
def test_bad_arguments_raise_helpful_tool_errors(run, kind, tool, args, messages):
    models = FakeModels()
    tb = Toolbox(run, models, kind=kind)
    for method in (tb.cost, tb.call):
        with pytest.raises(ToolError) as e:
            method(tool, args)
        for m in messages:
            assert m in str(e.value)
    assert models.calls == []


def test_dataset_required_when_several(tmp_path, models):
    layout = write_run(tmp_path / "run", datasets=("wiki", "chat"))
    tb = Toolbox(layout, models, kind="adl", overview_k=2)
    with pytest.raises(ToolError, match="'dataset' is required: this run has datasets 'wiki', 'chat'"):
        tb.call("get_logitlens_details", P)
    assert tb.call("get_logitlens_details", {"dataset": "chat", **P})["dataset"] == "chat"
    assert [(s["dataset"], s["layer"]) for s in tb.overview()["slices"]] == [("wiki", LAYER), ("chat", LAYER)]
    spec = {s["function"]["name"]: s["function"]["parameters"] for s in tb.specs()}
    assert spec["get_logitlens_details"]["required"] == ["dataset", "positions"]


# --------------------------------------------------------------------------------------------
# Function specs
# --------------------------------------------------------------------------------------------


def test_specs(run):
    adl = Toolbox(run, None, kind="adl")
    specs = adl.specs()
    json.loads(json.dumps(specs))
    assert tuple(s["function"]["name"] for s in specs) == AGENT_TOOLS_ADL == adl.tools
    params = {s["function"]["name"]: s["function"]["parameters"] for s in specs}
    for s in specs:
        assert s["type"] == "function" and s["function"]["description"]
        p = s["function"]["parameters"]
        assert p["type"] == "object" and p["additionalProperties"] is False
        assert set(p["required"]) <= set(p["properties"])
        # the documented arguments are exactly the accepted ones
        assert set(p["properties"]) == set(Toolbox._ALLOWED[s["function"]["name"]])
    assert params["get_logitlens_details"]["required"] == ["positions"]  # one dataset and one layer: optional
    assert params["get_steering_samples"]["required"] == ["position"]
    assert params["ask_model"]["required"] == ["prompts"]
    assert params["ask_model"]["properties"]["prompts"]["maxItems"] == 20
    assert params["generate_steered"]["required"] == ["position", "prompts", "n"]
    assert params["generate_steered"]["properties"]["n"]["maximum"] == 10
    assert params["get_patchscope_details"]["properties"]["k"]["maximum"] == 100
    bb = Toolbox(run, None, kind="blackbox").specs()
    assert [s["function"]["name"] for s in bb] == ["ask_model"]


# --------------------------------------------------------------------------------------------
# In-process model access on a tiny real pair
# --------------------------------------------------------------------------------------------


def test_in_process_models_on_tiny_pair(tiny_run):
    pair, layout, c = tiny_run
    ds, alpha, prompts = c.dataset, 8.0, ["tell me a story", "give me some ideas"]
    save(SteeringResult(dataset=ds, layer=2, eta_ft=c.eta_ft, grader="test", prompts=prompts, samples_per_prompt=1,
                        temperature=1.0, max_new_tokens=16,
                        thresholds=[SteeringThreshold(position=0, alpha=alpha, per_prompt=[alpha], steps=[],
                                                      generations_used=0, grader_calls=0)]),
         layout.steering(ds, 2))
    loads = []

    def loader():
        loads.append(1)
        return pair

    models = InProcessModels(layout, max_new_tokens=4, temperature=1.0, seed=3, pair_loader=loader)
    assert loads == []  # lazy
    kw = dict(layer=2, eta=c.eta_ft, n=2, temperature=1.0, max_new_tokens=4)
    out = models.steered(ds, 2, 0, prompts, 2)  # call 0: seed 3
    assert [len(x) for x in out] == [2, 2] and all(isinstance(t, str) for x in out for t in x)
    assert out == generate(pair, prompts, direction=c.delta[0], alpha=alpha, seed=3, **kw)
    assert out != generate(pair, prompts, direction=None, alpha=0.0, seed=3, **kw)  # steering is applied
    asked = models.ask(prompts)  # call 1: seed 4
    kw1 = dict(kw, n=1, direction=None, alpha=0.0, seed=4)
    assert asked == {"base": [x[0] for x in generate(pair, prompts, side="base", **kw1)],
                     "finetuned": [x[0] for x in generate(pair, prompts, side="ft", **kw1)]}
    assert asked["base"] != asked["finetuned"]
    # through the toolbox: the run's one dataset and layer need not be named
    tb = Toolbox(layout, models, kind="adl")
    res = tb.call("generate_steered", {"position": 0, "prompts": ["tell me a story"], "n": 3})
    assert (res["dataset"], res["layer"], res["alpha"]) == (ds, 2, alpha)
    assert len(res["generations"][0]["samples"]) == 3
    with pytest.raises(ToolError, match="position 1 not available.*choose from 0"):
        tb.call("generate_steered", {"position": 1, "prompts": ["x"], "n": 1})
    assert loads == [1]


def test_overview_shows_a_far_more_specific_scale_beside_the_graders(run, models):
    from difflens.rundir.artifacts import PatchscopeResult, load, save

    path = run.patchscope(DATASET, LAYER)
    res = load(PatchscopeResult, path)
    for e in res.entries:
        if e.source == "delta" and e.position == 1:  # scale 1.0 far more specific than the chosen 2.0
            e.specificity = [4.0, 0.5]
        elif e.source == "delta":
            e.specificity = [0.6, 0.5]  # not far more specific: no flag
    save(res, path)
    rows = Toolbox(run, models, kind="adl", overview_k=5, cut=50).overview()["slices"][0]["positions"]
    assert rows[1]["more_specific_scale"] == {"scale": 1.0, "patchscope": [" wrong_scale"] * 5}
    assert rows[1]["patchscope"] == ps_tokens(1)[:5]  # the grader's scale stays the main list
    assert "more_specific_scale" not in rows[0] and "more_specific_scale" not in rows[2]
