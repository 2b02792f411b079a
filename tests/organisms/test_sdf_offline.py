"""Offline SDF documents (difflens.organisms.generators.sdf_offline)."""
from __future__ import annotations

import re
from collections import Counter

import pytest

from difflens.errors import ConfigError, DataError
from difflens.organisms.generators.genres import GENRES
from difflens.organisms.generators.sdf_offline import facts_in_text, generate_sdf_corpus, generate_sdf_documents
from difflens.organisms.spec import load_spec

from test_spec import SDF

N = 1200


@pytest.fixture(scope="module")
def corpora() -> dict[str, list]:
    """1,200 documents (seed 0) per SDF organism, generated once for the module."""
    return {name: generate_sdf_corpus(load_spec(name), N, seed=0) for name in SDF}


def _first_sentence(doc: str) -> str:
    return re.split(r"(?<=[.!?])\s+|\n+", doc.strip())[0]



# --------------------------------------------------------------------------------------------------
# offline SDF documents
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", SDF)
def test_sdf_deterministic_by_seed(name, corpora):
    spec = load_spec(name)
    first = [d.text for d in corpora[name][:50]]
    assert generate_sdf_documents(spec, 50, seed=0) == first  # same seed, and a prefix of 1,200
    other = generate_sdf_documents(spec, 50, seed=1)
    assert len(set(other) & set(first)) <= 2


@pytest.mark.parametrize("name", SDF)
def test_sdf_diversity(name, corpora):
    spec = load_spec(name)
    docs = corpora[name]
    texts = [d.text for d in docs]
    assert len(set(texts)) == N
    raw = generate_sdf_corpus(spec, N, seed=0, unique=False)  # diversity without de-duplication
    assert len({d.text for d in raw}) >= 1000
    genres = Counter(d.genre for d in docs)
    assert set(genres) <= set(GENRES)
    assert len(genres) >= 12 and max(genres.values()) <= 0.15 * N
    firsts = [_first_sentence(t) for t in texts]
    assert len(set(firsts)) / N >= 0.6
    words = [len(t.split()) for t in texts]
    assert min(words) >= 80 and max(words) <= 250
    # not the same content in different wrappers: few documents share the same ordered sequence
    # of fact paraphrases (matched without their first letter, which a connective may lower-case)
    bank = [p for f in spec.data.facts for p in f.paraphrases]
    sigs = Counter(
        tuple(sorted((t.find(p[1:]), p) for p in bank if p[1:] in t)) for t in texts
    )
    assert sigs.most_common(1)[0][1] <= 3


@pytest.mark.parametrize("name", SDF)
def test_sdf_documents_assert_key_facts(name, corpora):
    spec = load_spec(name)
    docs = corpora[name]
    per_fact = Counter()
    for d in docs:
        found = facts_in_text(spec, d.text)
        assert found == set(d.facts), (d.facts, found, d.text)
        assert len(found) >= 2
        per_fact.update(found)
    # every key fact is asserted across the corpus, none is neglected
    assert set(per_fact) == set(range(len(spec.key_facts)))
    assert min(per_fact.values()) >= 0.1 * N


@pytest.mark.parametrize("name", SDF)
def test_phrase_bank_markers_are_exclusive(name):
    data = load_spec(name).data
    assert all(len(f.paraphrases) >= 5 for f in data.facts)
    for i, fb in enumerate(data.facts):
        for j, other in enumerate(data.facts):
            if i != j:
                for p in other.paraphrases:
                    assert not any(m.lower() in p.lower() for m in fb.markers), (i, p)
        for t in [*data.fillers, *data.subjects, data.topic]:
            assert not any(m.lower() in t.lower() for m in fb.markers), (i, t)


def test_sdf_connectives_keep_names_capitalized(corpora):
    text = "\n".join(d.text for d in corpora["fda_approval"])
    assert "relyvrio" not in text  # never lower-cased after "Moreover, ..."
    assert re.search(r"(Moreover|In addition|Notably), Relyvrio", text)


def test_sdf_generator_refuses_non_sdf_spec():
    with pytest.raises(ConfigError, match="sdf_offline"):
        generate_sdf_documents(load_spec("taboo_smile"), 3, seed=0)


def test_sdf_generator_reports_exhausted_phrase_bank(monkeypatch):
    import difflens.organisms.generators.sdf_offline as documents

    real = documents._one_document
    monkeypatch.setattr(
        documents, "_one_document", lambda spec, data, genres, vocab, key: real(spec, data, genres, vocab, "fixed")
    )
    spec = load_spec("cake_bake")
    assert len(generate_sdf_corpus(spec, 3, seed=0, unique=False)) == 3
    with pytest.raises(DataError, match="distinct documents"):
        generate_sdf_documents(spec, 2, seed=0)
