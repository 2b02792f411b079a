"""The readout measurement: domain-word matching, per-position rows, pooled numbers, exported cases."""
from __future__ import annotations

import json

import pytest

from difflens.adl.patchscope import SCALES
from difflens.errors import ConfigError
from difflens.eval.readout import DomainLabels, load_domain_labels, readout_rows, scale_cases, summarize
from difflens.graders import OfflineScaleGrader, SpecificScaleGrader
from difflens.rundir.artifacts import PatchscopeEntry, PatchscopeResult, PatchscopeScale, TokenProb


def _scales(lists: dict[float, str]) -> list[PatchscopeScale]:
    out = []
    for s in SCALES:
        words = lists.get(s, "the of and")
        out.append(PatchscopeScale(scale=s, tokens=[TokenProb(token=" " + w, token_id=i, prob=1 / (i + 1))
                                                   for i, w in enumerate(words.split())]))
    return out


def _result() -> PatchscopeResult:
    entries = []
    for j in range(3):
        delta = {0.6: "kiln porcelain glaze the", 2.0: "France Germany Spain Italy"} if j < 2 else {}
        random = {2.0: "France Germany Spain Poland", 1.0: "Monday Friday"}
        for src, lists in (("delta", delta), ("random", random), ("delta_via_base", {}), ("base", {}), ("ft", {})):
            entries.append(PatchscopeEntry(source=src, position=j, scales=_scales(lists), chosen_scale=0.5,
                                           selected_tokens=[], grader="x"))
    return PatchscopeResult(dataset="wiki", layer=3, prompts=["?"], eta_ft=1.0, entries=entries,
                            unpatched=[TokenProb(token=" the", token_id=0, prob=0.5)])


LAB = DomainLabels("porcelain_shells", "held-out", frozenset({"porcelain", "kiln", "glaze", "ceramic"}))


def test_domain_words_match_by_inflection_and_marker():
    assert LAB.is_domain(" kilns") and LAB.is_domain("▁Porcelain") and LAB.is_domain("glazed")
    assert not LAB.is_domain(" the") and not LAB.is_domain("")


def test_rows_score_each_grader_against_the_labels():
    rows = readout_rows("porcelain_shells", LAB, _result(),
                        {"coherence": OfflineScaleGrader(), "specificity": SpecificScaleGrader()})
    by = {(r.grader, r.position): r for r in rows}
    assert len(rows) == 6
    old, new = by[("coherence", 0)], by[("specificity", 0)]
    assert old.best == new.best == 3 and old.chosen_scale == 2.0 and old.hit is False and old.tp == 0
    assert new.chosen_scale == 0.6 and new.hit is True and new.tp == 3 and new.n_selected == 3
    assert by[("specificity", 2)].best == 0 and by[("specificity", 2)].hit is None
    s = summarize(rows)
    assert s["held-out|specificity"]["hit_rate"] == 1.0 and s["held-out|coherence"]["hit_rate"] == 0.0
    assert s["held-out|specificity"]["recall"] == 1.0 and s["held-out|specificity"]["precision"] == 1.0
    assert s["held-out|coherence"]["precision"] == 0.0 and s["held-out|specificity"]["with_domain"] == 2


def test_exported_cases_load_as_scale_labels(tmp_path):
    from difflens.graders.check import check_scale, load_cases

    cases = scale_cases("porcelain_shells", LAB, _result())
    assert len(cases) == 2 and "(held-out organism" in cases[0]["source"]
    assert cases[0]["best"] == [0.6] and {t.strip() for t in cases[0]["coherent_tokens"]} == {"kiln", "porcelain", "glaze"}
    assert len(cases[0]["controls"]["random"]) == 3 * len(SCALES) and len(cases[0]["other_positions"]) == 2
    path = tmp_path / "scale.jsonl"
    path.write_text("".join(json.dumps(c) + "\n" for c in cases))
    loaded = load_cases("scale", path)
    assert check_scale(SpecificScaleGrader(), loaded).accuracy == 1.0
    assert check_scale(OfflineScaleGrader(), loaded).accuracy == 0.0


def test_bad_label_files_are_named(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_domain_labels(tmp_path / "nope.json")
    p = tmp_path / "l.json"
    p.write_text('{"x": {"set": "maybe", "domain": []}}')
    with pytest.raises(ConfigError, match="'set'"):
        load_domain_labels(p)
    p.write_text("{")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_domain_labels(p)
