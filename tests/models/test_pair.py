"""Model pairs: shared-adapter pairs equal two models; mismatched pairs are refused before compute."""
from __future__ import annotations

import pytest
import torch

from conftest import save_tiny, save_tiny_adapter, tiny_tokenizer
from difflens.adl.collect import CollectConfig, collect
from difflens.errors import IncompatiblePairError
from difflens.rundir.layout import RunLayout
from difflens.models.pair import load_pair


def test_adapter_pair_shares_weights_and_equals_two_models(tmp_path, corpus_file):
    base_dir = save_tiny(tmp_path, "llama", 0)
    peft_model, adapter_dir = save_tiny_adapter(tmp_path, base_dir, r=4, target_modules=["q_proj", "v_proj", "down_proj"],
                                                init_lora_weights=False)
    merged_dir = tmp_path / "merged"
    peft_model.merge_and_unload().save_pretrained(merged_dir)
    tiny_tokenizer().save_pretrained(merged_dir)

    shared = load_pair(str(base_dir), str(adapter_dir))
    assert shared.shared_adapter and shared.base_lm.model is shared.ft_lm.model
    separate = load_pair(str(base_dir), str(merged_dir))
    assert not separate.shared_adapter
    cfg = CollectConfig(datasets=[str(corpus_file)], samples=30, layers=[2], batch_size=8, norm_samples=10)
    a = collect(shared, RunLayout(tmp_path / "r1"), cfg, progress=False)[str(corpus_file)][0]
    b = collect(separate, RunLayout(tmp_path / "r2"), cfg, progress=False)[str(corpus_file)][0]
    assert a.delta.abs().max() > 1e-4  # the adapter really changes the model
    torch.testing.assert_close(a.delta, b.delta, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(a.base_mean, b.base_mean)
    assert a.eta_ft == pytest.approx(b.eta_ft, rel=1e-5)


def test_refuses_architecture_mismatch(tmp_path):
    with pytest.raises(IncompatiblePairError, match="architecture mismatch.*llama.*qwen2"):
        load_pair(str(save_tiny(tmp_path, "llama")), str(save_tiny(tmp_path, "qwen2")))


def test_refuses_hidden_size_and_layer_mismatch(tmp_path):
    import transformers as T

    from conftest import tiny_config

    a = save_tiny(tmp_path, "llama")
    cfg = tiny_config("llama")
    cfg.hidden_size, cfg.intermediate_size = 48, 96
    wide = tmp_path / "wide"
    T.AutoModelForCausalLM.from_config(cfg).save_pretrained(wide)
    tiny_tokenizer().save_pretrained(wide)
    with pytest.raises(IncompatiblePairError, match="hidden size mismatch.*d=32.*d=48"):
        load_pair(str(a), str(wide))
    deep = tmp_path / "deep"
    T.AutoModelForCausalLM.from_config(tiny_config("llama", layers=6)).save_pretrained(deep)
    tiny_tokenizer().save_pretrained(deep)
    with pytest.raises(IncompatiblePairError, match="layer count mismatch.*4 layers.*6"):
        load_pair(str(a), str(deep))


def test_refuses_tokenizer_mismatch(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    a = save_tiny(tmp_path, "llama", 0)
    b = save_tiny(tmp_path, "llama", 1)
    vocab = dict(tiny_tokenizer().get_vocab())
    vocab["cake"], vocab["oven"] = vocab["oven"], vocab["cake"]  # same tokens, two ids swapped
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>", pad_token="<pad>").save_pretrained(b)
    with pytest.raises(IncompatiblePairError, match="tokenizer mismatch.*different ids.*cake"):
        load_pair(str(a), str(b))
