"""Integration tests on the embedded real weights (SmolLM2-135M-Instruct, Gemma-3-270m)."""
from __future__ import annotations

import pytest
import torch

from difflens.models.arch import ArchAdapter
from difflens.models.sources import load_model, resolve_source

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def smol():
    return load_model("smollm2-135m-instruct")


def test_embedded_models_load_and_match_their_logits(smol):
    arch = ArchAdapter(smol.model)
    assert (arch.name, arch.num_layers, arch.hidden_size) == ("llama", 30, 576)
    assert smol.tokenizer.chat_template
    ids = torch.tensor([smol.tokenizer("The capital of France is").input_ids])
    with torch.no_grad():
        logits = smol.model(input_ids=ids).logits
    last = arch.capture(smol.model, ids, [29])[29]
    torch.testing.assert_close(arch.unembed(last), logits, rtol=1e-4, atol=1e-3)
    assert "Paris" in smol.tokenizer.decode(logits[0, -1].argmax())


def test_gemma3_embedded_uses_bos_and_loads():
    lm = load_model("gemma3-270m")
    arch = ArchAdapter(lm.model)
    assert arch.name == "gemma3_text" and arch.num_layers == 18 and arch.uses_bos
    ids = lm.tokenizer("Hello world").input_ids
    assert ids[0] == lm.tokenizer.bos_token_id
    assert resolve_source("gemma3-270m").kind == "embedded"


def test_offline_coherence_rejects_word_salad_accepts_prose(smol):
    from difflens.graders import OfflineCoherence

    g = OfflineCoherence(smol.model, smol.tokenizer)
    g.calibrate([
        "Once upon a time, a little fox lived at the edge of a quiet forest. Every morning it walked to the river.",
        "Here are some ideas for the weekend: go for a hike, visit a museum, or cook a new recipe with friends.",
        "Sure! Let's talk about space exploration. What fascinates you most about the planets?",
        "The weather today is mild and sunny, which makes it a good day for a walk in the park.",
    ])
    verdicts = g.grade([
        "Duddin D Duddin Danza Duddin D Duddin Danza",
        "cake cake cake cake cake cake cake cake cake cake cake cake",
        "qz vrr flm oot pssk dwwl mnar trq zzpl ekk",
        "My favourite way to spend a Sunday is reading a good book on the balcony with a cup of tea.",
        "To bake a simple cake, mix flour, sugar and eggs, then bake the batter in a preheated oven.",
    ])
    assert verdicts == [False, False, False, True, True]
