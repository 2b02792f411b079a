"""The offline scale graders against the hand-labelled set (tests/data/labels/scale.jsonl).

Rows from real runs carry the controls and the other positions of their δ̄ sweep. Rows tagged
``(held-out organism`` come from organisms written after the specificity grader was frozen and never
looked at while designing it (porcelain_shells, klondike_platinum, toothbrush_sonic,
monarch_magnetic); the agreement is reported on them separately. The thresholds sit a little below
the measured values (see the closing note of the issue and README), so a regression fails.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from difflens.graders import OfflineScaleGrader, SpecificScaleGrader
from difflens.graders.check import check_scale, load_cases

LABELS = Path(__file__).resolve().parents[1] / "data" / "labels" / "scale.jsonl"
HELD_OUT = "(held-out organism"


@pytest.fixture(scope="module")
def cases():
    return load_cases("scale", LABELS)


def _split(cases):
    held = [c for c in cases if HELD_OUT in c["source"]]
    rest = [c for c in cases if HELD_OUT not in c["source"]]
    return held, rest


def test_the_label_set_has_held_out_organisms_with_controls(cases):
    held, rest = _split(cases)
    orgs = {c["source"].split("]", 1)[1].split("(")[0].strip() for c in held}
    assert len(orgs) >= 4 and len(held) >= 10
    assert all(c.get("controls", {}).get("random") and c.get("other_positions") for c in held)


def test_specificity_grader_agrees_with_the_labels(cases):
    held, rest = _split(cases)
    old_rest = check_scale(OfflineScaleGrader(), rest)
    new_rest = check_scale(SpecificScaleGrader(), rest)
    new_held = check_scale(SpecificScaleGrader(), held)
    old_held = check_scale(OfflineScaleGrader(), held)
    # the design rows (built-in organisms and hand-made traps) stay about as good as before
    assert new_rest.accuracy >= MIN_DESIGN_ACCURACY and new_rest.accuracy >= old_rest.accuracy - 0.1
    # organisms the grader never saw: the scale and the selected tokens
    assert new_held.accuracy >= MIN_HELD_OUT_ACCURACY and new_held.accuracy > old_held.accuracy
    assert new_held.precision >= MIN_HELD_OUT_PRECISION and new_held.recall >= MIN_HELD_OUT_RECALL


# measured (specificity grader): design rows 0.854 (35/41; the coherence grader 0.805), held-out
# organisms accuracy 0.90 (coherence grader 0.60), selected-token precision 0.33, recall 0.41
MIN_DESIGN_ACCURACY = 0.8
MIN_HELD_OUT_ACCURACY = 0.8
MIN_HELD_OUT_PRECISION = 0.3
MIN_HELD_OUT_RECALL = 0.35
