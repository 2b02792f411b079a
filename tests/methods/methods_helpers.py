"""Helpers of the methods tests: tiny pairs (random, crafted), a corpus of long texts, and the naive
full-logit computation every streaming statistic is compared with."""
from __future__ import annotations

import copy
import json
import random
from pathlib import Path

import torch

from conftest import WORDS, save_tiny


def text_corpus(tmp_path: Path, n: int = 40, lo: int = 12, hi: int = 20, name: str = "texts.jsonl") -> Path:
    """A local JSONL corpus of ``n`` texts of ``lo``..``hi`` words from the tiny vocabulary."""
    rng = random.Random(1)
    words = [w for w in WORDS if w not in ("\n", "?", "")]
    p = tmp_path / name
    p.write_text("".join(json.dumps({"text": " ".join(rng.choice(words) for _ in range(rng.randint(lo, hi)))}) + "\n"
                         for _ in range(n)))
    return p


def tiny_pair(tmp_path: Path, family: str = "llama", seeds: tuple[int, int] = (0, 1)):
    from difflens.models.pair import load_pair

    return load_pair(str(save_tiny(tmp_path, family, seeds[0])), str(save_tiny(tmp_path, family, seeds[1])))


def crafted_pair(tmp_path: Path, token_id: int, raise_by: float, noise: float = 1e-3):
    """A tiny Llama and a 'finetune' of it whose unembedding gives ``token_id`` a bias of ``raise_by`` at
    every position (plus small noise on the unembedding weights)."""
    from difflens.models.pair import ModelPair
    from difflens.models.sources import LoadedModel, ModelSource, load_model

    path = save_tiny(tmp_path, "llama", 0)
    base = load_model(str(path))
    ft_model = copy.deepcopy(base.model)
    old = ft_model.lm_head
    head = torch.nn.Linear(old.in_features, old.out_features, bias=True)
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        head.weight.copy_(old.weight + noise * torch.randn(old.weight.shape, generator=g))
        head.bias.zero_()
        head.bias[token_id] = raise_by
    ft_model.lm_head = head
    ft = LoadedModel(ft_model, base.tokenizer, ModelSource("local", "crafted", str(path)), "crafted-ft")
    return ModelPair(base, ft)


def naive(pair, corpus: Path, *, n: int, T: int, seed: int = 0, layer: int | None = None):
    """Each sample alone through each model's full forward: the model's own logits [N, T, V] and the
    hidden states at ``layer`` [N, T, d] (float64), for the samples the pass reads."""
    from difflens.data.corpora import load_corpus, sample_ids
    from difflens.models.tokens import bos_prefix_ids

    sample = sample_ids(load_corpus(str(corpus)), pair.tokenizer, n=n, k=T, seed=seed, max_len=T,
                        bos=bos_prefix_ids(pair.tokenizer, pair.arch))
    out = {"base": {"logits": [], "hidden": []}, "ft": {"logits": [], "hidden": []}, "ids": sample.ids}
    for ids in sample.ids:
        x = torch.tensor([ids])
        for side in ("base", "ft"):
            with pair.side(side) as m, torch.no_grad():
                o = m(input_ids=x, output_hidden_states=True)
            out[side]["logits"].append(o.logits[0, :T, :pair.vocab_size].double())
            if layer is not None:
                out[side]["hidden"].append(o.hidden_states[layer + 1][0, :T].double())
    for side in ("base", "ft"):
        out[side]["logits"] = torch.stack(out[side]["logits"])
        if layer is not None:
            out[side]["hidden"] = torch.stack(out[side]["hidden"])
    return out
