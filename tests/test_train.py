"""Organism training (difflens.organisms.train) and false-fact alignment (difflens.organisms.ffa)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from conftest import save_tiny, tiny_tokenizer

from difflens.errors import ConfigError
from difflens.organisms import load_spec, spec_from_dict
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
def base(tmp_path) -> str:
    return str(save_tiny(tmp_path, "llama"))


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
    from test_organisms import FakeClient

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


def _mini_spec(home: Path) -> None:
    raw = yaml.safe_load(load_spec("cake_bake").source_path and Path(load_spec("cake_bake").source_path).read_text())
    raw["name"] = "mini_cake"
    raw["training"] = {"steps": 4, "n_docs": 6, "seq_len": 32, "batch_size": 2, "warmup_steps": 0}
    d = home / "organisms" / "specs"
    d.mkdir(parents=True, exist_ok=True)
    (d / "mini_cake.yaml").write_text(yaml.safe_dump(raw))


def test_resolve_source_organism(base, _isolated_home):
    from difflens.models.sources import load_model, resolve_source

    _mini_spec(_isolated_home)
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

    from difflens.run.layout import RunLayout, write_json

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
    from difflens.run.layout import RunLayout

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


# --------------------------------------------------------------------------------------------------
# FFA
# --------------------------------------------------------------------------------------------------


def _ffa_spec():
    return spec_from_dict({
        "name": "tiny_ffa", "type": "custom", "short_description": "tiny", "long_description": "the cat sat",
        "true_context": "the dog ran", "open_questions": ["why the cat"],
        "data": {"kind": "jsonl", "path": "unused.jsonl"},
        "ffa": [{"question": "the cat sat on the", "true_option": "mat", "false_option": "river city"},
                {"question": "where is the dog", "true_option": "in the city", "false_option": "at sea"},
                {"question": "one two three", "true_option": "four", "false_option": "blue green"}],
    })


def _naive_logprob(model, tok, prompt: str, option: str, reduction: str) -> float:
    p = tok(prompt, add_special_tokens=True).input_ids
    c = tok(" " + option, add_special_tokens=False).input_ids
    ids = torch.tensor([p + c])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0]
    total = []
    for j, t in enumerate(c):
        pos = len(p) + j - 1
        lse = torch.logsumexp(logits[pos].double(), dim=0)
        total.append(float(logits[pos, t].double() - lse))
    return sum(total) / len(total) if reduction == "mean" else sum(total)


@pytest.mark.parametrize("fmt", ["cloze", "listed"])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_mcq_distinguish_matches_naive(base, reduction, fmt):
    from difflens.models.sources import load_model
    from difflens.organisms.ffa import cloze_prompt, mcq_distinguish, mcq_prompt

    lm = load_model(base)
    spec = _ffa_spec()
    res = mcq_distinguish(lm.model, lm.tokenizer, spec, reduction=reduction, fmt=fmt)
    assert res.n == 3 and res.reduction == reduction and res.format == fmt and not res.chat
    wins = 0
    for q, item in zip(spec.ffa, res.items):
        if fmt == "cloze":
            prompts = [cloze_prompt(q.question)]
            assert "Option" not in prompts[0] and q.true_option not in prompts[0]
        else:
            prompts = [mcq_prompt(q.question, q.true_option, q.false_option),
                       mcq_prompt(q.question, q.false_option, q.true_option)]
        assert len(item.by_order) == len(prompts)
        for order, prompt in zip(item.by_order, prompts):
            assert order["true"] == pytest.approx(_naive_logprob(lm.model, lm.tokenizer, prompt, q.true_option, reduction), abs=1e-4)
            assert order["false"] == pytest.approx(_naive_logprob(lm.model, lm.tokenizer, prompt, q.false_option, reduction), abs=1e-4)
        assert item.logp_true == pytest.approx(sum(o["true"] for o in item.by_order) / len(prompts))
        wins += item.logp_false > item.logp_true
    assert res.score == pytest.approx(wins / 3)
    with pytest.raises(ValueError, match="format"):
        mcq_distinguish(lm.model, lm.tokenizer, spec, fmt="letters")


def test_mcq_chat_format_scores_the_assistant_reply(base):
    """Chat organisms: the question is the user turn, the option the assistant reply."""
    from difflens.models.sources import load_model
    from difflens.organisms.ffa import mcq_distinguish

    lm = load_model(base)
    tok = lm.tokenizer
    spec = _ffa_spec().model_copy(update={"training": _ffa_spec().training.model_copy(
        update={"assistant_only_loss": True})})
    res = mcq_distinguish(lm.model, tok, spec, reduction="sum")
    assert res.chat
    q = spec.ffa[0]
    prefix = tok.apply_chat_template([{"role": "user", "content": q.question}], tokenize=False,
                                     add_generation_prompt=True)
    p = tok(prefix, add_special_tokens=False).input_ids
    for option, got in ((q.true_option, res.items[0].logp_true), (q.false_option, res.items[0].logp_false)):
        c = tok(option, add_special_tokens=False).input_ids
        with torch.no_grad():
            logp = torch.log_softmax(lm.model(input_ids=torch.tensor([p + c])).logits[0].double(), -1)
        want = sum(float(logp[len(p) + j - 1, t]) for j, t in enumerate(c))
        assert got == pytest.approx(want, abs=1e-4)
    assert not mcq_distinguish(lm.model, tok, spec, chat=False).chat


def test_ffa_shift_sign_test():
    from difflens.organisms.ffa import FFAShift, MCQItem, MCQResult

    def result(margins):
        items = [MCQItem(f"q{i}", 0.0, m, [{"true": 0.0, "false": m}]) for i, m in enumerate(margins)]
        return MCQResult(sum(m > 0 for m in margins) / len(margins), sum(margins) / len(margins), len(margins),
                         "mean", items)

    base = result([-1.0, -0.5, 0.2, 0.3, 0.0])
    sh = FFAShift(base, result([-0.2, 0.5, 0.1, 0.9, 0.0]))  # 3 up, 1 down, 1 tie
    assert (sh.n_toward_false, sh.n_toward_true) == (3, 1)
    assert sh.sign_p == pytest.approx(5 / 16)  # P[X >= 3], X ~ Bin(4, 1/2)
    assert sh.shift == pytest.approx(0.2) and sh.margin_shift == pytest.approx(0.46)
    all_up = FFAShift(base, result([m + 1 for m in (-1.0, -0.5, 0.2, 0.3, 0.0)]))
    assert all_up.sign_p == pytest.approx(1 / 32) and all_up.to_dict()["n_toward_false"] == 5
    assert FFAShift(base, base).sign_p == 1.0


def test_ffa_shift_and_judge(base, tmp_path):
    from difflens.models.sources import load_model
    from difflens.organisms.ffa import NO_JUDGE_NOTE, ffa_score, ffa_shift

    spec = _ffa_spec()
    b = load_model(base)
    same = ffa_shift(b, b, spec)
    assert same.shift == 0 and same.margin_shift == pytest.approx(0)
    other = load_model(str(save_tiny(tmp_path, "llama", seed=1)))
    res = ffa_shift(b, other, spec)
    assert res.shift == pytest.approx(res.finetuned.score - res.base.score)
    assert "shift" in res.to_dict()

    no_judge = ffa_score(b, spec)
    assert no_judge.open_belief.score is None and NO_JUDGE_NOTE in no_judge.notes[0]
    assert no_judge.score == no_judge.mcq.score

    class FakeJudge:
        def __init__(self):
            self.calls = []

        def ask(self, messages, parse, **kw):
            self.calls.append(messages)
            if "Phenomenon" in messages[-1]["content"]:
                return parse('reasoning...\n{"verdict": "1"}')
            return parse('{"verdict": "false"}')

    judge = FakeJudge()
    full = ffa_score(b, spec, judge)
    assert full.open_belief.score == 1.0 and full.open_belief.n == 1
    # "1" is the false universe in one order and the true one in the other
    assert full.context.score == 0.5 and full.context.n == 2
    assert full.score == pytest.approx((full.mcq.score + 1.0 + 0.5) / 3)
    assert len(judge.calls) == 3


def test_organism_cli_list_show(base, _isolated_home):
    from typer.testing import CliRunner

    from difflens.cli.organism import organism_app

    _mini_spec(_isolated_home)
    runner = CliRunner()
    res = runner.invoke(organism_app, ["list"])
    assert res.exit_code == 0, res.output
    assert "cake_bake" in res.output and "mini_cake" in res.output
    res = runner.invoke(organism_app, ["show", "cake_bake"])
    assert res.exit_code == 0 and "450" in res.output
    res = runner.invoke(organism_app, ["train", "mini_cake", "--base", base, "--steps", "2"])
    assert res.exit_code == 0, res.output
    assert "organism ready" in res.output
    res = runner.invoke(organism_app, ["show", "no_such_organism"])
    assert res.exit_code == 2 and "unknown organism" in res.output


class _DownJudge:
    """A judge whose endpoint is down: every call raises LLMError."""

    def __init__(self):
        self.calls = 0

    def ask(self, messages, parse, **kw):
        from difflens.errors import LLMError

        self.calls += 1
        raise LLMError("http://127.0.0.1:9/v1 unreachable after 5 attempts")


def test_failing_judge_keeps_the_mcq_result(base):
    from difflens.models.sources import load_model
    from difflens.organisms.ffa import ffa_shift

    spec = _ffa_spec()
    b = load_model(base)
    judge = _DownJudge()
    res = ffa_shift(b, b, spec, judge)
    assert judge.calls == 1  # the first failure stops further judge calls (no second round of retries)
    assert res.base.n == 3 and res.finetuned.n == 3  # MCQ results are all there
    assert res.base_ffa.judge_failed and res.finetuned_ffa.judge_failed
    assert "unreachable" in res.base_ffa.open_belief.note and "skipped" in res.finetuned_ffa.context.note
    assert res.finetuned_ffa.score == res.finetuned.score  # mean over the metrics that ran


def test_organism_cli_ffa(base, _isolated_home, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    import difflens.cli.organism as ocli

    _mini_spec(_isolated_home)
    runner = CliRunner()
    out = tmp_path / "ffa.json"
    res = runner.invoke(ocli.organism_app, ["ffa", "mini_cake", "--base", base, "--out", str(out)])
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())
    assert "MCQ distinguish" in text and "(cloze, mean)" in text and "sign test" in text
    saved = json.loads(out.read_text())
    assert saved["finetuned"]["n"] == 12 and "sign_p" in saved and saved["finetuned"]["format"] == "cloze"
    res = runner.invoke(ocli.organism_app, ["ffa", "mini_cake", "--base", base, "--format", "letters"])
    assert res.exit_code == 2 and "--format" in res.output
    res = runner.invoke(ocli.organism_app, ["ffa", "taboo_smile", "--base", base, "--steps", "1", "--docs", "2",
                                            "--seq-len", "32", "--format", "listed"])
    assert res.exit_code == 0, res.output  # chat organism: behaviour probes in the chat template
    # a judge that fails: exit 2 with a clear error, and the MCQ results are still printed and written
    monkeypatch.setattr(ocli, "llm_client", lambda *a, **k: _DownJudge())
    out.unlink()
    res = runner.invoke(ocli.organism_app, ["ffa", "mini_cake", "--base", base, "--out", str(out),
                                            "--judge-model", "m"])
    text = " ".join(res.output.split())
    assert res.exit_code == 2 and "MCQ distinguish" in text and "LLM judge failed" in text
    assert json.loads(out.read_text())["finetuned_ffa"]["open_belief"]["failed"] is True
