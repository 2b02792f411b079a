"""Every decoder family, dense and mixture-of-experts, on tiny random-init models built from configs.

Per family (two differently seeded models as base/finetuned, saved and loaded through
``load_pair``, which runs the load-time check): δ̄ from :func:`difflens.adl.collect.collect` equals a
naive full forward with ``output_hidden_states``; the logit lens of the last layer equals the
model's logits; steering with α = 0 is a no-op (and α ≠ 0 is not: the hook is live); Patchscope's edit
replaces the layer output at the patched token only; CAFT's projection leaves no component along
span(δ̄); the causal effect runs, finite and live; the load-time
check passes with its numbers. Plus families outside the table found by discovery alone, and
crafted non-standard layouts refused with a message naming what is missing.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

from conftest import _pin_tokenizer_class, tiny_tokenizer
from difflens.adl.collect import CollectConfig, collect, load_collected
from difflens.adl.steering import generate_rows, steering_hook, steering_vectors
from difflens.data.corpora import load_corpus, sample_ids
from difflens.errors import UnsupportedArchitectureError
from difflens.models.arch import FAMILIES, TESTED_FAMILIES, ArchAdapter, Family, check_model
from difflens.models.pair import load_pair
from difflens.models.tokens import bos_prefix_ids, pad_left
from difflens.rundir.layout import RunLayout

V, D, LAYERS = 512, 32, 3  # the tiny tokenizer has ~330 tokens


pytestmark = pytest.mark.usefixtures("one_thread")


def family_config(family: str):
    """A tiny config (3 layers, d=32, 4 heads, vocab 512) of ``family``, its quirks switched on at
    values that change the numbers (so a quirk the logit lens missed would fail the check)."""
    import transformers as T

    ids = dict(pad_token_id=1, bos_token_id=2, eos_token_id=3)
    common = dict(vocab_size=V, hidden_size=D, intermediate_size=64, num_hidden_layers=LAYERS, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=128, **ids)
    moe = dict(num_experts_per_tok=2)
    build = {
        "llama": lambda: T.LlamaConfig(**common),
        "mistral": lambda: T.MistralConfig(**common),
        "mixtral": lambda: T.MixtralConfig(num_local_experts=4, **moe, **common),
        "qwen2": lambda: T.Qwen2Config(**common),
        "qwen3": lambda: T.Qwen3Config(head_dim=8, **common),
        "qwen3_moe": lambda: T.Qwen3MoeConfig(head_dim=8, num_experts=4, moe_intermediate_size=32,
                                              decoder_sparse_step=1, **moe, **common),
        # softcap 1.0: random-init logits are O(1), so tanh visibly bends them
        "gemma2": lambda: T.Gemma2Config(head_dim=8, final_logit_softcapping=1.0, **common),
        "gemma3_text": lambda: T.Gemma3TextConfig(head_dim=8, final_logit_softcapping=1.0, sliding_window=16,
                                                  **common),
        "phi3": lambda: T.Phi3Config(**common),
        "olmo2": lambda: T.Olmo2Config(**common),
        "gpt_neox": lambda: T.GPTNeoXConfig(vocab_size=V, hidden_size=D, intermediate_size=64, num_hidden_layers=LAYERS,
                                            num_attention_heads=4, max_position_embeddings=128, **ids),
        "falcon": lambda: T.FalconConfig(vocab_size=V, hidden_size=D, num_hidden_layers=LAYERS, num_attention_heads=4,
                                         **ids),
        "falcon-new": lambda: T.FalconConfig(vocab_size=V, hidden_size=D, num_hidden_layers=LAYERS,
                                             num_attention_heads=4, num_kv_heads=2, new_decoder_architecture=True,
                                             **ids),
        "cohere": lambda: T.CohereConfig(logit_scale=0.25, **common),
        "granite": lambda: T.GraniteConfig(embedding_multiplier=6.0, logits_scaling=4.0, residual_multiplier=0.5,
                                           attention_multiplier=0.3, **common),
        "starcoder2": lambda: T.Starcoder2Config(**common),
        "gpt2": lambda: T.GPT2Config(vocab_size=V, n_embd=D, n_layer=LAYERS, n_head=4, n_positions=128, **ids),
        "gpt_oss": lambda: T.GptOssConfig(head_dim=8, num_local_experts=4, sliding_window=16,
                                          rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
                                          **moe, **common),
        # not in the family table: found by discovery alone
        "bloom": lambda: T.BloomConfig(vocab_size=V, hidden_size=D, n_layer=LAYERS, n_head=4, **ids),
        "phi": lambda: T.PhiConfig(**common),
        "opt": lambda: T.OPTConfig(vocab_size=V, hidden_size=D, ffn_dim=64, num_hidden_layers=LAYERS,
                                   num_attention_heads=4, word_embed_proj_dim=D, max_position_embeddings=128, **ids),
    }
    return build[family]()


def has_gpt_oss() -> bool:
    import transformers as T

    return hasattr(T, "GptOssConfig")


PAIR_FAMILIES = [f for f in TESTED_FAMILIES if f != "gpt_oss" or has_gpt_oss()] + ["falcon-new"]
UNTABLED = ["bloom", "phi", "opt"]


def tiny(family: str, seed: int):
    import transformers as T

    torch.manual_seed(seed)
    return T.AutoModelForCausalLM.from_config(family_config(family)).eval()


def save(tmp_path, family: str, seed: int):
    path = tmp_path / f"{family}-{seed}"
    tiny(family, seed).save_pretrained(path)
    tiny_tokenizer(bos=family.startswith("gemma")).save_pretrained(path)
    _pin_tokenizer_class(path)
    return path


def naive_means(pair, corpus_path, k: int, n: int, layers):
    """Untruncated full forward with output_hidden_states, one text at a time, first k positions."""
    sample = sample_ids(load_corpus(str(corpus_path)), pair.tokenizer, n=n, k=k, seed=0, max_len=10_000,
                        bos=bos_prefix_ids(pair.tokenizer, pair.arch))
    acc = {(s, li): [] for s in ("base", "ft") for li in layers}
    for ids in sample.ids:
        for side in ("base", "ft"):
            with pair.side(side) as m, torch.no_grad():
                hs = m(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states
            for li in layers:
                acc[side, li].append(hs[li + 1][0, :k].double())
    return {key: torch.stack(v).mean(0) for key, v in acc.items()}, len(sample.ids)


@pytest.mark.parametrize("family", PAIR_FAMILIES)
def test_family_every_check(tmp_path, corpus_file, family):
    pair = load_pair(str(save(tmp_path, family, 0)), str(save(tmp_path, family, 1)))  # runs the load-time check
    arch = pair.arch
    assert arch.num_layers == LAYERS and arch.hidden_size == D
    assert arch.known and arch.name == family.split("-")[0]

    # 1. the load-time check passes, with its numbers (the same check load_pair ran)
    for side in ("base", "ft"):
        with pair.side(side) as model:
            chk = check_model(model, pair.arch_of(side), name=side)
        assert chk.ok and len(chk.layer_diffs) == LAYERS - 1
        assert max(chk.layer_diffs.values()) <= 1e-5 and chk.logits_diff <= 1e-5, chk

    # 2. δ̄ from collection equals a naive full forward
    k, n, layers = 4, 12, [0, 1]
    res = collect(pair, RunLayout(tmp_path / "run"),
                  CollectConfig(datasets=[str(corpus_file)], samples=n, positions=k, layers=layers, batch_size=6,
                                norm_samples=4, norm_len=8), progress=False)
    assert [c.layer for c in res[str(corpus_file)]] == layers
    naive, n_naive = naive_means(pair, corpus_file, k, n, layers)
    for li in layers:
        got = load_collected(RunLayout(tmp_path / "run"), str(corpus_file), li)
        assert got.n == n_naive == n
        torch.testing.assert_close(got.base_mean.double(), naive["base", li], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(got.delta.double(), naive["ft", li] - naive["base", li], rtol=1e-5, atol=1e-5)
        assert got.delta.abs().max() > 1e-3  # two different initialisations: a real difference
        assert got.eta_base > 0 and got.eta_ft > 0

    # 3. the logit lens of the last layer (final norm, unembedding, the family's scaling) equals the logits
    ids = torch.tensor([[5, 17, 42, 9, 100, 7]])
    with pair.ft() as model, torch.no_grad():
        logits = model(input_ids=ids).logits
        last = pair.ft_arch.capture(model, ids, [LAYERS - 1])[LAYERS - 1]
    torch.testing.assert_close(pair.ft_arch.unembed(last), logits.float(), rtol=1e-5, atol=1e-5)

    # 4. steering with α = 0 is a no-op, and α ≠ 0 is not (the hook sits on a live layer output)
    x, mask = pad_left([[5, 17, 42], [9, 100, 7, 8, 30]], 1, pair.input_device("ft"))
    direction = res[str(corpus_file)][1].delta[2]
    with pair.ft() as model, torch.no_grad():
        clean = model(input_ids=x, attention_mask=mask).logits
        with steering_hook(pair, 1, steering_vectors(direction, [0.0, 0.0], 1.0), mask):
            zero = model(input_ids=x, attention_mask=mask).logits
        with steering_hook(pair, 1, steering_vectors(direction, [0.0, 4.0], got.eta_ft), mask):
            moved = model(input_ids=x, attention_mask=mask).logits
    assert torch.equal(zero, clean)
    # row 0 unsteered (MoE layers batch the tokens per expert: float rounding, not a change)
    torch.testing.assert_close(moved[0], clean[0], rtol=1e-5, atol=1e-5)
    assert (moved[1] - clean[1]).abs().max() > 1e-2
    gen = dict(layer=1, eta=got.eta_ft, temperature=1.0, max_new_tokens=3, seed=0)
    unsteered = generate_rows(pair, ["why", "tell me"], None, direction=None, **gen)
    assert generate_rows(pair, ["why", "tell me"], [0.0, 0.0], direction=direction, **gen) == unsteered

    # 5. Patchscope's edit really replaces the layer output at the patched token (and only there)
    from difflens.adl.interventions import replace_rows
    from difflens.adl.patchscope import patched_next_token_probs

    last = torch.tensor([2, 4])
    values = torch.randn(2, D)
    with pair.ft() as model, torch.no_grad():
        plain = pair.ft_arch.capture(model, x, [1], attention_mask=mask)[1]
        with pair.ft_arch.edit_layer(1, replace_rows(last, values)):
            seen = pair.ft_arch.capture(model, x, [1], attention_mask=mask)[1]
    torch.testing.assert_close(seen[torch.arange(2), last], values)
    torch.testing.assert_close(seen[0, :2], plain[0, :2])
    probs = patched_next_token_probs(pair, 1, direction, [0.5, 5.0], got.eta_ft)
    assert probs.shape[:2] == (2, 3) and torch.allclose(probs.sum(-1), torch.ones(2, 3), atol=1e-4)
    assert (probs[0].log() - probs[1].log()).abs().max() > 1e-3  # the scale reaches the output

    # CAFT's edit (project out span(δ̄)) leaves no component along the basis in the layer output
    from difflens.adl.interventions import project_out
    from difflens.organisms.train import caft_basis

    q = caft_basis(res[str(corpus_file)][1].delta[:2], 2)
    with pair.ft() as model, torch.no_grad(), pair.ft_arch.edit_layer(1, project_out(q)):
        ablated = pair.ft_arch.capture(model, x, [1], attention_mask=mask)[1]
    assert (ablated.float() @ q).abs().max() < 1e-4

    # 6. the causal effect (eq. 1) runs on the family's layers: finite, and live
    from difflens.eval.causal import delta_ce

    texts = [[5, 17, 42, 9, 100, 7], [8, 30, 12, 11]]
    ce = delta_ce(pair, 1, torch.stack([direction, torch.randn(D)]), texts, progress=False)
    assert len(ce) == 2 and all(torch.isfinite(torch.tensor(ce))) and max(abs(c) for c in ce) > 0


@pytest.mark.parametrize("family", UNTABLED)
def test_family_outside_the_table_is_discovered(family):
    """A family with a standard layout needs no code change: discovery finds it, the check passes."""
    model = tiny(family, 0)
    arch = ArchAdapter(model)
    assert family not in FAMILIES and not arch.known and arch.num_layers == LAYERS
    chk = arch.check()
    assert chk.ok and chk.logits_diff <= 1e-5
    ids = torch.tensor([[5, 17, 42, 9]])
    with torch.no_grad():
        hs = model(input_ids=ids, output_hidden_states=True).hidden_states
    torch.testing.assert_close(arch.capture(model, ids, [1])[1], hs[2])


def test_gemma3_multimodal_wrapper_reads_the_text_decoder():
    """Gemma3ForConditionalGeneration holds two ModuleLists of equal length (vision and text):
    get_decoder() picks the text one."""
    import transformers as T

    text = T.Gemma3TextConfig(vocab_size=V, hidden_size=D, intermediate_size=64, num_hidden_layers=LAYERS,
                              num_attention_heads=4, num_key_value_heads=2, head_dim=8, sliding_window=16)
    vision = T.SiglipVisionConfig(hidden_size=D, intermediate_size=64, num_hidden_layers=LAYERS, num_attention_heads=4,
                                  image_size=28, patch_size=14)
    torch.manual_seed(0)
    model = T.AutoModelForCausalLM.from_config(
        T.Gemma3Config(text_config=text.to_dict(), vision_config=vision.to_dict(), mm_tokens_per_image=4)).eval()
    arch = ArchAdapter(model)
    assert arch.name == "gemma3" and arch.uses_bos
    assert arch.layout.layers == "model.language_model.layers"
    assert arch.layout.final_norm == "model.language_model.norm"
    assert arch.check().ok


def test_granite_and_cohere_scalings_are_applied():
    granite = ArchAdapter(tiny("granite", 0))
    assert granite.logit_scale == pytest.approx(1 / 4.0) and granite.embed_scale == pytest.approx(6.0)
    ids = torch.tensor([[5, 6]])
    torch.testing.assert_close(granite.embed(ids), granite.embedding.weight[ids] * 6.0)
    assert ArchAdapter(tiny("cohere", 0)).logit_scale == pytest.approx(0.25)
    g2 = ArchAdapter(tiny("gemma2", 0))
    assert g2.softcap == 1.0 and g2.tied_embeddings and g2.embed_scale == pytest.approx(D ** 0.5)


# -- refusals --------------------------------------------------------------------------------------
class OddLM(nn.Module):
    """A crafted causal LM with a non-standard layout: its blocks sit in a ModuleDict, its head is a
    bare parameter (no get_output_embeddings module)."""

    def __init__(self, with_list: bool = False, linear_head: bool = False):
        from transformers import PretrainedConfig

        super().__init__()
        self.config = PretrainedConfig(model_type="oddlm", num_hidden_layers=2, hidden_size=16, vocab_size=64)
        self.emb = nn.Embedding(64, 16)
        blocks = [nn.Linear(16, 16), nn.Linear(16, 16)]
        self.blocks = nn.ModuleList(blocks) if with_list else nn.ModuleDict({"a": blocks[0], "b": blocks[1]})
        self.head = nn.Linear(16, 64, bias=False) if linear_head else nn.Parameter(torch.randn(64, 16))

    def get_input_embeddings(self):
        return self.emb

    def get_output_embeddings(self):
        return None


def test_non_standard_layout_is_refused_naming_what_is_missing():
    with pytest.raises(UnsupportedArchitectureError) as e:
        ArchAdapter(OddLM())
    msg = str(e.value)
    assert "'oddlm' (OddLM)" in msg
    assert "the decoder layers (no nn.ModuleList of config.num_hidden_layers=2 entries; ModuleLists present: none)" \
        in msg
    assert "the unembedding (get_output_embeddings() returned no module with a weight)" in msg
    assert "Family entry in difflens/models/arch.py" in msg
    with pytest.raises(UnsupportedArchitectureError, match=r"the final norm \(no norm module beside the decoder "
                                                           r"layers in 'OddLM': children are emb \(Embedding\), "
                                                           r"blocks \(ModuleList\)\)"):
        ArchAdapter(OddLM(with_list=True))


def test_family_table_paths_override_discovery(monkeypatch):
    """What discovery cannot find, a Family entry names: here no final norm and a head that
    get_output_embeddings() does not return."""
    monkeypatch.setitem(FAMILIES, "oddlm", Family("oddlm", final_norm="", unembed="head"))
    model = OddLM(with_list=True, linear_head=True)
    arch = ArchAdapter(model)
    assert (arch.layout.layers, arch.layout.final_norm, arch.layout.embed, arch.layout.unembed) == \
        ("blocks", "", "emb", "head")
    h = torch.randn(3, 16)
    torch.testing.assert_close(arch.unembed(h), model.head(h))  # no final norm applied
    assert isinstance(arch.final_norm, nn.Identity)
    monkeypatch.setitem(FAMILIES, "oddlm", Family("oddlm", final_norm="", unembed="lm_head"))
    with pytest.raises(UnsupportedArchitectureError, match=r"the unembedding at 'lm_head' \(the path in the family table\)"):
        ArchAdapter(model)


def test_load_time_check_refuses_with_the_numbers():
    """A model that computes its logits or hidden states other than difflens reads them is refused."""
    model = tiny("llama", 0)
    handle = model.register_forward_hook(lambda m, i, out: out.__setitem__("logits", out.logits * 2) or out)
    with pytest.raises(UnsupportedArchitectureError,
                       match=r"ft-model \(llama, LlamaForCausalLM\) failed difflens's load-time check .*"
                             r"logit lens of the last layer .* differs from the model's logits by 0\.5"):
        check_model(model, name="ft-model")
    handle.remove()
    arch = ArchAdapter(model)
    assert check_model(model, arch).ok
    arch._layers = nn.ModuleList(list(arch._layers)[::-1])  # hooks on the wrong layers
    chk = check_model(model, arch, raise_on_fail=False)
    assert not chk.ok and chk.layer_diffs[0] > 0.1 and "layer 0:" in chk.problems[0]


def test_load_pair_runs_the_check_unless_skipped(tmp_path, monkeypatch):
    import difflens.models.pair as pair_mod

    calls = []
    monkeypatch.setattr(pair_mod, "check_model", lambda model, arch, name: calls.append(name))
    base, ft = str(save(tmp_path, "qwen3", 0)), str(save(tmp_path, "qwen3", 1))
    load_pair(base, ft)
    assert calls == [base, ft]
    load_pair(base, ft, check=False)
    assert calls == [base, ft]
