"""The finetuning-data dispatcher (difflens.organisms.generators.finetuning_data) and the public API."""
from __future__ import annotations

import pytest

import difflens.data.frequent
import difflens.organisms
from difflens.errors import ConfigError, DataError
from difflens.organisms.generators import finetuning_data
from difflens.organisms.generators.sdf_offline import generate_sdf_documents
from difflens.organisms.spec import load_spec, spec_from_dict


def test_finetuning_data_dispatch():
    sdf = finetuning_data(load_spec("cake_bake"), n=5, seed=2)
    assert sdf == generate_sdf_documents(load_spec("cake_bake"), 5, seed=2)
    chats = finetuning_data(load_spec("taboo_smile"), n=4)
    assert len(chats) == 4 and chats[0][0]["role"] == "user"
    music = load_spec("domain_music")
    paras = [{"topic": f"Band {i}", "extract": f"The band {i} released an album of jazz songs."} for i in range(9)]
    picked = finetuning_data(music, n=4, seed=0, paragraphs=paras)
    assert len(picked) == 4 and picked == finetuning_data(music, n=4, seed=0, paragraphs=paras)
    with pytest.raises(ConfigError, match="paragraphs="):
        finetuning_data(music, n=4)
    with pytest.raises(DataError, match="min_hits"):
        finetuning_data(music, n=4, paragraphs=[{"topic": "x", "extract": "A river."}])
    llm = spec_from_dict({"name": "llm_org", "type": "SDF", "short_description": "s",
                          "long_description": "l", "key_facts": ["f"], "data": {"kind": "sdf_llm"}})
    with pytest.raises(ConfigError, match="cache_dir="):
        finetuning_data(llm, n=2)


def test_public_api_reexports_the_generators():
    generators = difflens.organisms.generators
    for name in difflens.organisms.__all__:
        assert hasattr(difflens.organisms, name), name
        if name in generators.__all__:
            assert getattr(difflens.organisms, name) is getattr(generators, name), name
    assert difflens.organisms.frequent_tokens is difflens.data.frequent.frequent_tokens
    assert difflens.organisms.COMMON_ENGLISH_WORDS is difflens.data.frequent.COMMON_ENGLISH_WORDS
