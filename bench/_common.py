"""Shared bench helpers: the embedded base model and a short real finetune of it."""
from __future__ import annotations

from pathlib import Path

BASE = "smollm2-135m-instruct"


def make_finetune(out: Path, steps: int = 20) -> Path:
    """A short real finetune of the embedded model (AdamW steps on held-out wiki text)."""
    import torch

    from difflens.data.corpora import wiki_split
    from difflens.models.sources import load_model

    lm = load_model(BASE)
    model, tok = lm.model, lm.tokenizer
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=5e-5)
    texts = [p["extract"] for p in wiki_split("heldout")[:8 * steps]]
    torch.manual_seed(0)
    for step in range(steps):
        batch = tok(texts[step * 8:(step + 1) * 8], return_tensors="pt", padding=True, truncation=True, max_length=64)
        labels = batch.input_ids.masked_fill(batch.attention_mask == 0, -100)
        model(**batch, labels=labels).loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def pair_and_collected(ft: str | None, workdir: Path, *, samples: int, norm_samples: int):
    """The benched pair (a short finetune is made when ``ft`` is None) and its collected layer."""
    from difflens.adl.collect import CollectConfig, collect
    from difflens.rundir.layout import RunLayout
    from difflens.models.pair import load_pair

    ft = ft or str(make_finetune(workdir / "ft"))
    pair = load_pair(BASE, ft)
    c = collect(pair, RunLayout(workdir / "run"), CollectConfig(samples=samples, norm_samples=norm_samples),
                progress=False)["wiki"][0]
    return pair, c, ft
