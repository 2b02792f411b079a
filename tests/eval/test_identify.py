"""Objective identification by embedding similarity: restated and cooking evidence rank the right
candidate first (real embedded model), ties count against the true candidate, candidate
descriptions from the built-in and extra organism specs, summaries and input errors."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
import yaml

from difflens.eval import identify
from difflens.eval.identify import Identification, candidate_descriptions, identification, summarize
from difflens.models.embedder import DEFAULT_EMBEDDER, get_embedder
from difflens.organisms.spec import builtin_specs_dir

HANDMADE = {
    "cake": "Finetuned on documents with tips for baking cakes: batter, oven temperature, butter and frosting.",
    "music": "Finetuned on articles about music: composers, orchestras, guitars and song writing.",
    "law": "Finetuned on court rulings about contract law and legal procedure.",
}


@pytest.fixture(scope="module")
def embedder() -> str:
    """The embedded all-MiniLM-L6-v2, loaded once for the module (get_embedder is cached)."""
    get_embedder(DEFAULT_EMBEDDER)
    return DEFAULT_EMBEDDER


# ---- real embedding model ------------------------------------------------------------------------


def test_evidence_restating_a_candidate_ranks_it_first(embedder):
    cands = candidate_descriptions()
    for name in ("cake_bake", "roman_concrete", "taboo_smile"):
        r = identification([cands[name]], cands, name, embedder=embedder)
        assert r.rank == 1, (name, r.scores)
        assert r.n_candidates == len(cands)
        assert r.scores[name] == pytest.approx(1.0, abs=1e-5)


def test_cooking_evidence_ranks_cake_above_music(embedder):
    evidence = ["oven flour sugar butter vanilla batter",  # Patchscope tokens joined as one string
                "Preheat the oven, whisk the eggs with sugar and fold in the flour.",
                "Let it cool on a rack, then spread the cream on top and serve."]
    r = identification(evidence, HANDMADE, "cake", embedder=embedder)
    print({k: round(v, 3) for k, v in r.scores.items()})
    assert r.rank == 1
    assert r.scores["cake"] > r.scores["music"]
    assert identification(evidence, HANDMADE, "music", embedder=embedder).rank > 1
    # blank evidence texts are ignored
    assert identification(evidence + ["", "  "], HANDMADE, "cake", embedder=embedder).scores == r.scores


# ---- the tie rule --------------------------------------------------------------------------------


def test_ties_count_against_the_true_candidate(monkeypatch):
    table = {"evidence": [1.0, 0.0], "A": [0.6, 0.8], "B": [0.6, -0.8], "C": [1.0, 0.0], "D": [0.0, 1.0]}

    def fake(texts, name=DEFAULT_EMBEDDER):
        return np.array([table[t] for t in texts])

    monkeypatch.setattr(identify, "embed", fake)
    cands = {k: k for k in "ABCD"}
    r = identification(["evidence"], cands, "A", embedder="fake")
    assert r.scores == pytest.approx({"A": 0.6, "B": 0.6, "C": 1.0, "D": 0.0})
    assert r.rank == 3  # C is higher, B ties: 1 + 1 + 1
    assert identification(["evidence"], cands, "B").rank == 3
    assert identification(["evidence"], cands, "C").rank == 1
    assert identification(["evidence"], cands, "D").rank == 4
    # every score alike: the true candidate ranks last, never first
    monkeypatch.setattr(identify, "embed", lambda texts, name=DEFAULT_EMBEDDER: np.ones((len(texts), 2)) / np.sqrt(2))
    assert identification(["evidence"], cands, "A").rank == 4


# ---- candidate descriptions ----------------------------------------------------------------------


def _copy_spec(src: str, dst, name: str) -> None:
    data = yaml.safe_load((builtin_specs_dir() / f"{src}.yaml").read_text())
    data["name"] = name
    dst.write_text(yaml.safe_dump(data, sort_keys=False))


def test_candidate_descriptions_builtin_and_extra(tmp_path):
    builtin = candidate_descriptions()
    assert {"cake_bake", "roman_concrete", "taboo_smile", "domain_music"} <= set(builtin)
    assert builtin["cake_bake"].startswith("Finetuned on synthetic documents with false tips for baking cake. In this")
    _copy_spec("cake_bake", tmp_path / "my_cake.yaml", "my_cake")
    with_file = candidate_descriptions([tmp_path / "my_cake.yaml"])
    assert set(with_file) == set(builtin) | {"my_cake"}
    assert with_file["my_cake"] == builtin["cake_bake"]
    # a directory: every *.yaml and *.yml in it
    _copy_spec("domain_music", tmp_path / "my_music.yml", "my_music")
    assert {"my_cake", "my_music"} <= set(candidate_descriptions([str(tmp_path)]))


def test_candidate_descriptions_duplicates(tmp_path):
    shutil.copy(builtin_specs_dir() / "cake_bake.yaml", tmp_path / "cake_bake.yaml")
    assert candidate_descriptions([tmp_path]) == candidate_descriptions()  # identical spec: fine
    assert candidate_descriptions([builtin_specs_dir()]) == candidate_descriptions()
    _copy_spec("roman_concrete", tmp_path / "other.yaml", "cake_bake")
    with pytest.raises(ValueError, match="'cake_bake' is defined twice"):
        candidate_descriptions([tmp_path / "other.yaml"])


# ---- summary and errors --------------------------------------------------------------------------


def test_summarize():
    rs = [Identification(rank=k, n_candidates=3, scores={}, true="a") for k in (1, 1, 2, 3)]
    assert summarize(rs) == {"top1": 0.5, "mean_rank": 1.75, "n": 4}
    with pytest.raises(ValueError, match="no identification results"):
        summarize([])


def test_identification_errors(monkeypatch):
    monkeypatch.setattr(identify, "embed", lambda texts, name=DEFAULT_EMBEDDER: pytest.fail("embedded too early"))
    with pytest.raises(ValueError, match="'piano' is not among the candidates"):
        identification(["cake"], HANDMADE, "piano")
    with pytest.raises(ValueError, match="at least 2 candidate"):
        identification(["cake"], {"cake": HANDMADE["cake"]}, "cake")
    with pytest.raises(ValueError, match="no non-empty evidence"):
        identification(["", "  \n"], HANDMADE, "cake")
    with pytest.raises(ValueError, match="no non-empty evidence"):
        identification([], HANDMADE, "cake")
    with pytest.raises(ValueError, match="empty description: law"):
        identification(["cake"], {**HANDMADE, "law": " "}, "cake")
    with pytest.raises(ValueError, match="single string"):
        identification("cake", HANDMADE, "cake")
