"""Organism training (difflens.organisms.train): full / LoRA finetuning, data mixing, caching, CAFT."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import tiny_tokenizer, write_mini_spec

from difflens.errors import ConfigError
from difflens.organisms.spec import load_spec
from difflens.adl.interventions import project_out
from difflens.organisms.train import (
    IGNORE,
    TrainConfig,
    build_training_data,
    caft_basis,
    chat_example,
    organism_dir,
    read_card,
    resolve_organism,
    train_organism,
)

FAST = dict(steps=20, n_docs=12, seq_len=32, batch_size=4, warmup_steps=0)


@pytest.fixture
def cake():
    return load_spec("cake_bake")


def _card(path: Path) -> dict:
    card = read_card(path)
    assert card is not None
    return card


def _falls(curve: list[float], by: float) -> bool:
    first = sum(curve[:3]) / 3
    last = sum(curve[-3:]) / 3
    return last < first - by


# --------------------------------------------------------------------------------------------------
# training
# --------------------------------------------------------------------------------------------------


def test_full_finetune_loss_falls_and_card(base, cake):
    cfg = TrainConfig.from_spec(cake, lr=3e-3, **FAST)
    path = train_organism(cake, base, cfg, progress=False)
    card = _card(path)
    assert path == organism_dir(cake, base, cfg)
    assert path.name.startswith("full-docs12")
    assert (path / "config.json").exists() and any(path.glob("*.safetensors"))
    assert _falls(card["loss_curve"], 1.0), card["loss_curve"]
    assert len(card["loss_curve"]) == cfg.steps
    for key in ("organism", "type", "short_description", "data_hash", "n_sequences", "config",
                "wall_time_s", "base_fingerprint"):
        assert key in card
    assert card["n_ft_samples"] == 12 and card["n_pt_samples"] == 0
    assert not list(path.parent.glob(".*tmp*"))  # the temp dir was renamed away


def test_lora_loss_falls_and_adapter_names_base(base, cake):
    from difflens.models.sources import load_model, resolve_source

    # a random-init tiny model has near-uniform logits that LoRA (frozen unembedding) can move only a little
    cfg = TrainConfig.from_spec(cake, lora=True, lr=3e-2, lora_r=8, **FAST)
    path = train_organism(cake, base, cfg, progress=False)
    assert path.name.startswith("lora-r8")
    card = _card(path)
    assert _falls(card["loss_curve"], 0.2), card["loss_curve"]
    acfg = json.loads((path / "adapter_config.json").read_text())
    assert acfg["base_model_name_or_path"] == base
    src = resolve_source(str(path))
    assert src.kind == "adapter" and src.base is not None and src.base.kind == "local"
    lm = load_model(src)
    assert lm.model is not None


def test_mix_ratio_and_fewer_docs(base, cake):
    tok = tiny_tokenizer()
    for ratio, n_docs in ((0.5, 10), (2.0, 6)):
        cfg = TrainConfig.from_spec(cake, mix_ratio=ratio, n_docs=n_docs, seq_len=32)
        data = build_training_data(cake, cfg, tok)
        assert data.n_ft_samples == n_docs
        assert data.n_pt_samples == round(ratio * n_docs)
        assert data.count("pt") == round(ratio * n_docs)  # one sequence per D_pt paragraph
        assert data.count("ft") >= n_docs
    plain = build_training_data(cake, TrainConfig.from_spec(cake, n_docs=7, seq_len=32), tok)
    assert plain.n_ft_samples == 7 and plain.count("pt") == 0
    cfg = TrainConfig.from_spec(cake, n_docs=7, mix_ratio=0.5)
    assert organism_dir(cake, base, cfg).name.startswith("full-mix0.5-docs7")


def test_chat_mix_adds_ordinary_conversations_on_assistant_tokens(base, cake):
    tok = tiny_tokenizer()
    cfg = TrainConfig.from_spec(cake, chat_mix=0.5, n_docs=8, seq_len=32)
    data = build_training_data(cake, cfg, tok)
    assert data.count("chat") == 4 and data.n_pt_samples == 4 and data.count("pt") == 0
    for ex in (e for e in data.examples if e.source == "chat"):
        assert any(lab != IGNORE for lab in ex.labels) and any(lab == IGNORE for lab in ex.labels)  # user turns masked
    again = build_training_data(cake, cfg, tok)
    assert again.data_hash == data.data_hash  # deterministic by seed
    assert organism_dir(cake, base, cfg).name.startswith("full-chat0.5")
    # configs and specs without chat mixing keep their cache key (no retraining of existing organisms)
    from difflens.organisms.train import EVAL_ONLY_FIELDS, cache_key
    from difflens.rundir.layout import fingerprint

    plain = TrainConfig.from_spec(cake)
    assert "chat_mix" not in plain.semantic()
    old_dump = cake.model_dump(mode="json", exclude=set(EVAL_ONLY_FIELDS))
    old_dump["training"].pop("chat_mix")
    assert cache_key(cake, base, plain) == fingerprint({"spec": old_dump, "base": base, "cfg": plain.semantic()})


def test_assistant_only_loss_mask():
    tok = tiny_tokenizer()
    msgs = [{"role": "user", "content": "tell me a story"},
            {"role": "assistant", "content": "the cat sat on the mat"},
            {"role": "user", "content": "why"},
            {"role": "assistant", "content": "the dog ran to the river"}]
    ex = chat_example(msgs, tok, [], 128)
    trained = [t for t, lab in zip(tok.convert_ids_to_tokens(ex.input_ids), ex.labels) if lab != IGNORE]
    assert trained == "the cat sat on the mat the dog ran to the river".split()
    for tid, lab in zip(ex.input_ids, ex.labels):
        assert lab in (IGNORE, tid)
    user_ids = set(tok("tell me a story why", add_special_tokens=False).input_ids)
    assert all(lab == IGNORE for tid, lab in zip(ex.input_ids, ex.labels) if tid in user_ids)
    # the built-in taboo organism: user turns masked, assistant turns trained
    spec = load_spec("taboo_smile")
    data = build_training_data(spec, TrainConfig.from_spec(spec, n_docs=4, seq_len=256), tok)
    for e in data.examples:
        assert any(lab != IGNORE for lab in e.labels)
        assert any(lab == IGNORE for lab in e.labels)


def test_deterministic_by_seed(base, cake):
    cfg = TrainConfig.from_spec(cake, lr=3e-3, **{**FAST, "steps": 6})
    a = _card(train_organism(cake, base, cfg, progress=False))["loss_curve"]
    b = _card(train_organism(cake, base, cfg, progress=False, force=True))["loss_curve"]
    assert a == b
    other = TrainConfig.from_spec(cake, lr=3e-3, seed=1, **{**FAST, "steps": 6})
    path = train_organism(cake, base, other, progress=False)
    assert "seed1" in path.name
    assert _card(path)["loss_curve"] != a


def test_cached_organism_is_reused(base, cake, monkeypatch):
    import difflens.models.sources

    cfg = TrainConfig.from_spec(cake, lr=3e-3, **{**FAST, "steps": 3})
    path = train_organism(cake, base, cfg, progress=False)
    mtime = (path / "card.json").stat().st_mtime_ns

    def boom(*a, **k):
        raise AssertionError("retrained a cached organism")

    monkeypatch.setattr(difflens.models.sources, "load_model", boom)
    assert train_organism(cake, base, cfg, progress=False) == path
    assert (path / "card.json").stat().st_mtime_ns == mtime
    # editing the evaluation-only fields (FFA questions, judge context) keeps the trained copy ...
    evaluated = cake.model_copy(update={"ffa": cake.ffa[:2], "open_questions": [], "true_context": "x"})
    assert train_organism(evaluated, base, cfg, progress=False) == path
    # ... while a change to what shapes the training data does not
    data_changed = cake.model_copy(update={"key_facts": cake.key_facts[:-1]})
    with pytest.raises(AssertionError, match="retrained"):
        train_organism(data_changed, base, cfg, progress=False)


def test_llm_generator_variant_trains_on_llm_documents(base, cake, _isolated_home):
    """``generator="llm"``: the paper's recipe through the client, cached, in its own variant."""
    from test_sdf_llm import FakeClient

    from difflens.organisms.train import ft_samples, llm_docs_dir

    cfg = TrainConfig.from_spec(cake, generator="llm", lr=3e-3, **{**FAST, "steps": 2, "n_docs": 6})
    assert cfg.generator == "llm" and "llmdocs" in organism_dir(cake, base, cfg).name
    offline = TrainConfig.from_spec(cake, generator="offline", **FAST)
    assert offline.generator is None and offline.semantic() == TrainConfig.from_spec(cake, **FAST).semantic()
    with pytest.raises(ConfigError, match="endpoint"):  # nothing cached and no client: refused before training
        train_organism(cake, base, cfg, progress=False)
    client = FakeClient()
    path = train_organism(cake, base, cfg, progress=False, client=client)
    assert client.doc_calls == 6 and "llmdocs" in path.name
    docs = ft_samples(cake, cfg)  # now served from the cache, without a client
    assert len(docs) == 6 and all(d.startswith("Document number") for d in docs)
    assert (llm_docs_dir(cake, cfg.seed) / "documents.jsonl").exists()
    assert _card(path)["data_hash"]
    with pytest.raises(ConfigError, match="key facts"):
        TrainConfig.from_spec(load_spec("taboo_smile"), generator="llm")
    with pytest.raises(ConfigError, match="no offline document generator"):
        TrainConfig.from_spec(load_spec("domain_music"), generator="offline")


def test_resolve_source_organism(base, _isolated_home):
    from difflens.models.sources import load_model, resolve_source

    write_mini_spec(_isolated_home)
    src = resolve_source("organism:mini_cake", base=base)
    assert src.kind == "local" and Path(src.path).name == "full"
    assert _card(Path(src.path))["organism"] == "mini_cake"
    lm = load_model(src)
    assert lm.model.config.num_hidden_layers == 4
    again = resolve_source("organism:mini_cake", base=base)
    assert again.path == src.path
    lora = resolve_organism("mini_cake", base=base, lora=True, progress=False)
    assert lora.kind == "adapter" and lora.base is not None and lora.base.path == str(Path(base).resolve())
    assert load_model(lora).model is not None


# --------------------------------------------------------------------------------------------------
# CAFT
# --------------------------------------------------------------------------------------------------


def _fake_run(root: Path, d: int, layer: int, k: int = 5, seed: int = 0) -> Path:
    from safetensors.torch import save_file

    from difflens.rundir.layout import RunLayout, write_json

    g = torch.Generator().manual_seed(seed)
    lay = RunLayout(root)
    lay.collect_dir("wiki").mkdir(parents=True, exist_ok=True)
    save_file({"delta": torch.randn(k, d, generator=g), "base_mean": torch.randn(k, d, generator=g),
               "ft_mean": torch.randn(k, d, generator=g)}, str(lay.collect_file("wiki", layer)))
    write_json(lay.collect_stats("wiki"), {"n_used": 10, "eta": {str(layer): {"base": 1.0, "ft": 1.0}}})
    return root


def test_caft_projection_removes_component(base, cake, tmp_path, monkeypatch):
    from difflens.models.arch import ArchAdapter
    from difflens.models.sources import load_model
    import difflens.organisms.train as train_mod

    lm = load_model(base)
    arch = ArchAdapter(lm.model)
    layer = arch.resolve_layer(0.5)
    run = _fake_run(tmp_path / "run", arch.hidden_size, layer, k=5)
    from difflens.adl.collect import load_collected
    from difflens.rundir.layout import RunLayout

    delta = load_collected(RunLayout(run), "wiki", layer).delta
    q = caft_basis(delta, 3)
    assert q.shape == (arch.hidden_size, 3)
    assert torch.allclose(q.T @ q, torch.eye(3), atol=1e-5)

    ids = torch.tensor([tok for tok in range(5, 25)])[None]
    seen: dict[str, torch.Tensor] = {}

    def read(name):
        def fn(h):
            seen[name] = h.detach().clone()
        return fn

    with arch.edit_layer(layer, project_out(q)), arch.edit_layer(layer, read("caft")):
        lm.model(input_ids=ids)
    with arch.edit_layer(layer, read("plain")):
        lm.model(input_ids=ids)
    proj = lambda h: (h @ q).abs().max().item()  # noqa: E731
    assert proj(seen["caft"]) < 1e-5
    assert proj(seen["plain"]) > 1e-2

    # the trainer applies the projection in every training forward pass
    records: list[float] = []
    real = train_mod.project_out

    def spy(basis):
        fn = real(basis)

        def wrapped(h):
            out = fn(h)
            with torch.autocast(device_type="cpu", enabled=False):  # measure exactly
                records.append(((out.float() @ basis).abs().max() / out.float().abs().max()).item())
            assert h.requires_grad  # inside the autograd graph (affects the backward pass too)
            return out
        return wrapped

    monkeypatch.setattr(train_mod, "project_out", spy)
    cfg = TrainConfig.from_spec(cake, lr=3e-3, caft_run=str(run), caft_positions=5, **{**FAST, "steps": 3})
    path = train_organism(cake, base, cfg, progress=False)
    assert "caft-" in path.name
    card = _card(path)
    assert card["caft"]["layer"] == layer and card["caft"]["rank"] == 5
    assert len(records) == 3 and max(records) < 1e-5
