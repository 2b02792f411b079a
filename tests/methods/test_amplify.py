"""Logit-difference amplification: β = 0 is the finetuned model's own sampling (token for token what
``generate`` draws with the same seed), the KV-cached steps equal a full recompute, a finetune that
raises one token's logit shows it far more often amplified, adapter pairs work, the β grid is judged
with the steering stage's bar, results are reused and resumed, and bad input fails before any model
work."""
from __future__ import annotations

import json

import pytest
import torch
from pydantic import ValidationError
from typer.testing import CliRunner

from conftest import AllCoherent, save_tiny, save_tiny_adapter, tiny_tokenizer
from methods_helpers import crafted_pair, tiny_pair
from difflens.adl.steering import encode_prompts_left
from difflens.errors import ConfigError
from difflens.methods import amplify as amp
from difflens.methods.amplify import AmplifyConfig, AmplifySample, amplified_generate, load_samples, run_amplify
from difflens.rundir.layout import RunLayout

PROMPTS = ["tell me a story", "give me some fun ideas for the weekend ? why", "hello", "why you choose a topic"]
EOS = 3  # the tiny models' end-of-sequence id
CAKE = tiny_tokenizer().convert_tokens_to_ids("cake")


def _hf_generate(pair, prompts, *, side="ft", temperature, max_new_tokens, seed):
    """What the steering stage draws: ``generate`` on one model, after torch.manual_seed(seed)."""
    ids, mask = encode_prompts_left(pair, prompts, side)
    torch.manual_seed(seed)
    with pair.side(side) as m, torch.no_grad():
        out = m.generate(input_ids=ids, attention_mask=mask, do_sample=True, temperature=temperature, top_p=1.0,
                         top_k=0, max_new_tokens=max_new_tokens, pad_token_id=pair.tokenizer.pad_token_id)
    rows = out[:, ids.shape[1]:].tolist()
    return [r[:r.index(EOS) + 1] if EOS in r else r for r in rows]


def _naive(pair, prompts, beta, *, temperature, max_new_tokens, seed):
    """No KV cache: every step runs both models over the whole left-padded sequence so far."""
    ids, mask = encode_prompts_left(pair, prompts, "ft")
    done = torch.zeros(len(prompts), dtype=torch.bool)
    new = []
    torch.manual_seed(seed)
    for _ in range(max_new_tokens):
        pos = (mask.cumsum(-1) - 1).clamp_min(0)
        logits = {}
        for side in ("base", "ft"):
            with pair.side(side) as m, torch.no_grad():
                logits[side] = m(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False).logits[:, -1]
        lf, lb = logits["ft"].float(), logits["base"].float()
        probs = torch.softmax((lf + beta * (lf - lb))[:, :pair.vocab_size] / temperature, dim=-1)
        nxt = torch.multinomial(probs, 1).squeeze(1)
        nxt = torch.where(done, torch.full_like(nxt, pair.tokenizer.pad_token_id), nxt)
        done |= nxt == EOS
        new.append(nxt)
        if done.all():
            break
        ids = torch.cat([ids, nxt[:, None]], 1)
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
    rows = torch.stack(new, 1).tolist()
    return [r[:r.index(EOS) + 1] if EOS in r else r for r in rows]


def _eos_pair(tmp_path, **kw):
    """A pair whose finetune makes the end-of-sequence token likely: rows end at different steps."""
    return crafted_pair(tmp_path, EOS, raise_by=4.5, **kw)


# -- sampling ----------------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["llama", "gpt2", "gemma3_text"])
def test_beta_zero_is_generate_on_the_finetuned_model_with_the_same_seed(tmp_path, family):
    pair = tiny_pair(tmp_path, family)
    want = _hf_generate(pair, PROMPTS, temperature=1.3, max_new_tokens=12, seed=5)
    assert amplified_generate(pair, PROMPTS, 0.0, temperature=1.3, max_new_tokens=12, seed=5) == want
    assert amplified_generate(pair, PROMPTS, side="ft", temperature=1.3, max_new_tokens=12, seed=5) == want
    # and the base side alone is the base model's generate
    assert amplified_generate(pair, PROMPTS, side="base", temperature=1.3, max_new_tokens=12, seed=5) == \
        _hf_generate(pair, PROMPTS, side="base", temperature=1.3, max_new_tokens=12, seed=5)
    # another seed draws other tokens
    assert amplified_generate(pair, PROMPTS, 0.0, temperature=1.3, max_new_tokens=12, seed=6) != want


def test_rows_stop_at_end_of_sequence_as_generate_does(tmp_path):
    pair = _eos_pair(tmp_path)
    prompts = PROMPTS * 3
    got = amplified_generate(pair, prompts, 0.0, temperature=1.0, max_new_tokens=30, seed=2)
    assert got == _hf_generate(pair, prompts, temperature=1.0, max_new_tokens=30, seed=2)
    lengths = {len(r) for r in got}
    assert len(lengths) > 2 and all(r[-1] == EOS for r in got if len(r) < 30)


@pytest.mark.parametrize("beta", [2.0, 0.5])
def test_kv_cached_steps_equal_a_full_recompute(tmp_path, beta):
    pair = _eos_pair(tmp_path, noise=0.3)
    prompts = PROMPTS * 2
    got = amplified_generate(pair, prompts, beta, temperature=1.1, max_new_tokens=16, seed=3)
    assert got == _naive(pair, prompts, beta, temperature=1.1, max_new_tokens=16, seed=3)
    # β changes the tokens
    assert got != amplified_generate(pair, prompts, 0.0, temperature=1.1, max_new_tokens=16, seed=3)


def test_per_row_betas_equal_one_beta_per_call(tmp_path):
    pair = tiny_pair(tmp_path)
    row = amplified_generate(pair, PROMPTS, [0.0, 2.0, 0.0, 2.0], temperature=1.0, max_new_tokens=8, seed=1)
    zero = amplified_generate(pair, PROMPTS, 0.0, temperature=1.0, max_new_tokens=8, seed=1)
    two = amplified_generate(pair, PROMPTS, 2.0, temperature=1.0, max_new_tokens=8, seed=1)
    assert row == [zero[0], two[1], zero[2], two[3]]


def test_a_raised_logit_shows_far_more_often_amplified(tmp_path):
    pair = crafted_pair(tmp_path, CAKE, raise_by=1.0)
    prompts = PROMPTS * 8

    def share(beta):
        rows = amplified_generate(pair, prompts, beta, temperature=1.0, max_new_tokens=10, seed=0)
        toks = [t for r in rows for t in r]
        return sum(t == CAKE for t in toks) / len(toks)

    plain, amplified = share(0.0), share(4.0)
    # bias 1 among 512 near-uniform logits: e/(511 + e) ≈ 0.5 %; at β = 4 the bias is 5: ≈ 22 %
    assert plain < 0.03 and amplified > 0.12 and amplified > 8 * plain


def test_adapter_pair(tmp_path):
    from difflens.models.pair import load_pair

    base_dir = save_tiny(tmp_path, "llama", 0)
    _, adapter_dir = save_tiny_adapter(tmp_path, base_dir, r=4, target_modules=["q_proj", "v_proj", "down_proj"],
                                       init_lora_weights=False)
    pair = load_pair(str(base_dir), str(adapter_dir))
    assert pair.shared_adapter
    kw = dict(temperature=1.2, max_new_tokens=10, seed=4)
    assert amplified_generate(pair, PROMPTS, 0.0, **kw) == _hf_generate(pair, PROMPTS, **kw)
    assert amplified_generate(pair, PROMPTS, side="base", **kw) == _hf_generate(pair, PROMPTS, side="base", **kw)
    amplified = amplified_generate(pair, PROMPTS, 3.0, **kw)
    assert amplified == _naive(pair, PROMPTS, 3.0, **kw)
    assert amplified != amplified_generate(pair, PROMPTS, 0.0, **kw)
    # the adapter is on again afterwards
    assert amplified_generate(pair, PROMPTS, side="ft", **kw) == _hf_generate(pair, PROMPTS, **kw)


# -- the method ----------------------------------------------------------------------------------


class NoCakeFeast:
    """Coherent unless a text says 'cake' twice or more: amplifying the crafted cake pair fails it."""

    name = "no-cake"

    def __init__(self):
        self.texts = 0

    def identity(self):
        return {"backend": "test", "kind": "no-cake"}

    def grade(self, texts):
        self.texts += len(texts)
        return [t.split().count("cake") < 2 for t in texts]


def _cfg(**kw):
    base = dict(betas=[0.5, 1.0, 4.0, 16.0], prompts=["tell me a story", "hello"], samples=3, max_new_tokens=8,
                threshold_prompts=["give me some fun ideas", "why"], search_samples=4, min_coherent=3,
                calibration_samples=4, batch_size=4, temperature=1.0, search_temperature=1.0)
    return AmplifyConfig(**{**base, **kw})


def test_run_amplify_grid_choice_and_samples(tmp_path):
    pair = crafted_pair(tmp_path, CAKE, raise_by=1.0)
    layout = RunLayout(tmp_path / "run")
    cfg = _cfg()
    res = run_amplify(pair, layout, cfg, NoCakeFeast(), progress=False)
    # every β judged; unamplified text never says cake twice: the bar is the full 3 of 4 per prompt
    assert [v.beta for v in res.grid] == [0.5, 1.0, 4.0, 16.0]
    assert res.unamplified_pass_rates == [1.0, 1.0] and res.min_coherent_per_prompt == [3, 3]
    # bias 1 amplified: 1.5 % cake per token at β = 1, 22 % at β = 4, everything at β = 16
    assert [v.coherent for v in res.grid] == [True, True, False, False], res.grid
    assert res.chosen_beta == 1.0 and res.any_coherent
    for v in res.grid:
        assert v.coherent == (sum(k >= 3 for k in v.n_coherent) * 2 > 2)
    assert res.n_samples == 6 and res.samples_per_prompt == 3 and res.grader == "no-cake"
    assert res.forward_passes > 0 and res.forward_tokens > res.n_positions > 0 and res.seconds >= 0
    # samples: amplified, ft and base on the same prompts, sample indices and seeds
    samples = load_samples(layout)
    assert len(samples) == 18
    by_role = {r: [s for s in samples if s.role == r] for r in ("amplified", "ft", "base")}
    keys = {r: [(s.prompt, s.sample, s.seed) for s in v] for r, v in by_role.items()}
    assert keys["amplified"] == keys["ft"] == keys["base"]
    assert {s.beta for s in by_role["amplified"]} == {res.chosen_beta} and {s.beta for s in by_role["base"]} == {None}
    # ft samples are the finetuned model's own generate() on those prompts (chunks of 4 rows, seed + 17 + chunk)
    rows = [p for p in cfg.prompts for _ in range(cfg.samples)]
    for c in range(0, len(rows), 4):
        want = amp.decode(pair, _hf_generate(pair, rows[c:c + 4], temperature=1.0, max_new_tokens=8,
                                             seed=cfg.seed + 17 + c // 4))
        assert [s.text for s in by_role["ft"][c:c + 4]] == want
        assert {s.seed for s in by_role["ft"][c:c + 4]} == {cfg.seed + 17 + c // 4}
    cake = {r: sum(s.text.split().count("cake") for s in v) for r, v in by_role.items()}
    assert cake["amplified"] > cake["ft"]
    # the result on disk is the one returned
    on_disk = json.loads(layout.method_result("chat", "amplify").read_text())
    assert on_disk["chosen_beta"] == res.chosen_beta and on_disk["fingerprint"] == res.fingerprint
    assert not layout.method_result("chat", "amplify.partial").exists()


def test_bar_is_relative_to_the_unamplified_pass_rate(tmp_path):
    from conftest import PassesEveryOther

    pair = tiny_pair(tmp_path)
    res = run_amplify(pair, RunLayout(tmp_path / "run"), _cfg(betas=[1.0, 2.0]), PassesEveryOther(), progress=False)
    # half of the unamplified samples pass: a tested β needs ceil(3 · 0.5) = 2 of 4, which it gets
    assert res.unamplified_pass_rates == [0.5, 0.5] and res.min_coherent_per_prompt == [2, 2]
    assert all(v.coherent for v in res.grid) and res.chosen_beta == 2.0
    absolute = run_amplify(pair, RunLayout(tmp_path / "abs"), _cfg(betas=[1.0, 2.0], coherence_reference="absolute"),
                           PassesEveryOther(), progress=False)
    assert absolute.min_coherent_per_prompt == [3, 3] and not absolute.any_coherent
    assert absolute.chosen_beta == 0.0
    # no coherent β: the amplified samples are the finetuned model's (β = 0)
    samples = load_samples(RunLayout(tmp_path / "abs"))
    amp_, ft = [s for s in samples if s.role == "amplified"], [s for s in samples if s.role == "ft"]
    assert [s.text for s in amp_] == [s.text for s in ft] and {s.beta for s in amp_} == {0.0}


def test_the_steering_stages_prompts_and_bar():
    """Amplification uses the steering stage's prompts, defaults and bar (imported, not copied)."""
    import itertools

    from difflens.adl import steering

    assert AmplifyConfig().prompts == steering.STEERING_PROMPTS
    assert AmplifyConfig().threshold_prompts == steering.THRESHOLD_PROMPTS
    cfg, scfg = AmplifyConfig(), steering.SteeringConfig()
    assert (cfg.search_samples, cfg.min_coherent, cfg.search_temperature, cfg.temperature, cfg.samples,
            cfg.max_new_tokens, cfg.coherence_reference) == \
        (scfg.search_samples, scfg.min_coherent, scfg.search_temperature, scfg.final_temperature,
         scfg.final_samples, scfg.max_new_tokens, scfg.coherence_reference)
    rates = [None] + [i / 20 for i in range(21)]
    for ref, m, rate in itertools.product(("unsteered", "absolute"), (1, 3, 8, 10), rates):
        want = steering.required_coherent(steering.SteeringConfig(min_coherent=m, search_samples=10,
                                                                  coherence_reference=ref), rate)
        got = AmplifyConfig(min_coherent=m, search_samples=10, coherence_reference=ref).needs([rate])[0] \
            if rate is not None else steering.required_coherent(AmplifyConfig(min_coherent=m, coherence_reference=ref),
                                                                 None)
        assert got == want, (ref, m, rate)
    # the chosen β is the bracket's lower end the steering search would narrow the grid to
    betas = [0.5, 1.0, 2.0, 4.0, 8.0]
    for pattern in itertools.product((True, False), repeat=len(betas)):
        verdicts = [amp.BetaVerdict(beta=b, n_coherent=[0], n_samples=1, need=[1], coherent=ok)
                    for b, ok in zip(betas, pattern)]
        assert amp.choose_beta(verdicts) == steering.narrow(0.0, 100.0, betas, list(pattern))[0], pattern


def test_choose_beta_outvotes_a_lone_verdict():
    def v(b, ok):
        return amp.BetaVerdict(beta=b, n_coherent=[0], n_samples=1, need=[1], coherent=ok)

    assert amp.choose_beta([v(1, True), v(2, False), v(4, True), v(8, True), v(16, False)]) == 8
    assert amp.choose_beta([v(1, True), v(2, True), v(4, False), v(8, True), v(16, False)]) == 2
    assert amp.choose_beta([v(1, False), v(2, False)]) == 0.0
    assert amp.choose_beta([v(1, True), v(2, True)]) == 2


def test_a_finished_result_is_reused_and_a_changed_config_recomputes(tmp_path, monkeypatch):
    pair = tiny_pair(tmp_path)
    layout = RunLayout(tmp_path / "run")
    first = run_amplify(pair, layout, _cfg(betas=[1.0, 2.0]), AllCoherent(), progress=False)

    def refuse(*a, **k):
        raise AssertionError("a reused result was recomputed")

    monkeypatch.setattr(amp, "amplified_generate", refuse)
    again = run_amplify(pair, layout, _cfg(betas=[1.0, 2.0]), AllCoherent(), progress=False)
    assert again == first
    with pytest.raises(AssertionError, match="recomputed"):
        run_amplify(pair, layout, _cfg(betas=[1.0, 3.0]), AllCoherent(), progress=False)


def test_an_interrupted_run_resumes_to_the_same_samples(tmp_path, monkeypatch):
    pair = tiny_pair(tmp_path)
    whole = run_amplify(pair, RunLayout(tmp_path / "whole"), _cfg(betas=[1.0, 2.0]), AllCoherent(), progress=False)
    layout = RunLayout(tmp_path / "run")
    real, calls = amp.amplified_generate, []

    def dies_after_five(*a, **k):
        calls.append(1)
        if len(calls) > 5:
            raise KeyboardInterrupt("killed")
        return real(*a, **k)

    monkeypatch.setattr(amp, "amplified_generate", dies_after_five)
    with pytest.raises(KeyboardInterrupt):
        run_amplify(pair, layout, _cfg(betas=[1.0, 2.0]), AllCoherent(), progress=False)
    assert layout.method_result("chat", "amplify.partial").exists()
    monkeypatch.setattr(amp, "amplified_generate", real)
    calls.clear()
    counted = []

    def counting(*a, **k):
        counted.append(1)
        return real(*a, **k)

    monkeypatch.setattr(amp, "amplified_generate", counting)
    resumed = run_amplify(pair, layout, _cfg(betas=[1.0, 2.0]), AllCoherent(), progress=False)
    assert load_samples(layout) == load_samples(RunLayout(tmp_path / "whole"))
    strip = {"seconds", "fingerprint"}
    assert resumed.model_dump(exclude=strip) == whole.model_dump(exclude=strip)
    # calibration 2 calls, ft 2, grid 2 × 2, amplified 2, base 2 = 12 in all; 5 were finished before
    assert len(counted) == 12 - 5


def test_control_pair_writes_to_its_own_directory(tmp_path):
    pair = tiny_pair(tmp_path)
    layout = RunLayout(tmp_path / "run")
    res = run_amplify(pair, layout, _cfg(betas=[1.0]), AllCoherent(), dataset="wiki", control="noise", progress=False)
    assert res.control == "noise"
    assert layout.method_result("wiki", "amplify", "noise").exists()
    assert layout.method_samples("wiki", "amplify", "noise").exists()
    assert not layout.method_result("wiki", "amplify").exists()
    assert load_samples(layout, "wiki", "noise")[0].role == "amplified"


def test_a_fixed_beta_skips_the_search_and_equals_the_searched_samples(tmp_path):
    """A control is amplified at the real pair's β: no calibration or grid, and at the same β, prompts
    and seeds the samples are those the search's final step draws."""
    pair = crafted_pair(tmp_path, CAKE, raise_by=1.0)
    searched = run_amplify(pair, RunLayout(tmp_path / "a"), _cfg(), NoCakeFeast(), progress=False)
    grader = NoCakeFeast()
    fixed = run_amplify(pair, RunLayout(tmp_path / "b"), _cfg(), grader, progress=False, beta=searched.chosen_beta)
    assert fixed.grid == [] and fixed.chosen_beta == searched.chosen_beta and grader.texts == 0
    assert fixed.fingerprint != searched.fingerprint
    a, b = load_samples(RunLayout(tmp_path / "a")), load_samples(RunLayout(tmp_path / "b"))
    assert [(s.role, s.text) for s in a] == [(s.role, s.text) for s in b]
    assert fixed.forward_passes < searched.forward_passes
    with pytest.raises(ConfigError, match="fixed β"):
        run_amplify(pair, RunLayout(tmp_path / "c"), _cfg(), NoCakeFeast(), progress=False, beta=-1.0)


def test_progress_lines_in_a_log_file(tmp_path):
    import io

    from rich.console import Console

    buf = io.StringIO()
    run_amplify(tiny_pair(tmp_path), RunLayout(tmp_path / "run"), _cfg(betas=[1.0]), AllCoherent(),
                console=Console(file=buf, force_terminal=False, width=200))
    out = buf.getvalue()
    assert "amplify chat: 0/" in out and "samples (100%)" in out


# -- bad input -------------------------------------------------------------------------------------


@pytest.mark.parametrize("kw,message", [
    ({"betas": [-1.0]}, "every β must be a finite number ≥ 0"),
    ({"betas": []}, "give at least one β"),
    ({"betas": [float("nan")]}, "every β must be a finite number ≥ 0"),
    ({"prompts": []}, "give at least one prompt"),
    ({"samples": 0}, "greater than or equal to 1"),
    ({"temperature": 0.0}, "greater than 0"),
    ({"min_coherent": 5, "search_samples": 4}, "min_coherent 5 is more than search_samples 4"),
])
def test_bad_config_is_refused(kw, message):
    with pytest.raises(ValidationError, match=message):
        _cfg(**kw)


def test_bad_input_is_a_config_error_before_any_model_work(tmp_path, monkeypatch):
    pair = tiny_pair(tmp_path)

    def refuse(*a, **k):
        raise AssertionError("sampled before the input was checked")

    monkeypatch.setattr(amp, "amplified_generate", refuse)
    layout = RunLayout(tmp_path / "run")
    bad = _cfg().model_copy(update={"betas": [-2.0]})  # model_copy skips validation: run_amplify checks again
    with pytest.raises(ConfigError, match="amplify betas: every β must be a finite number ≥ 0"):
        run_amplify(pair, layout, bad, AllCoherent(), progress=False)
    with pytest.raises(ConfigError, match="amplify betas: give at least one β"):
        run_amplify(pair, layout, _cfg().model_copy(update={"betas": []}), AllCoherent(), progress=False)
    with pytest.raises(ConfigError, match="a control pair needs a name"):
        run_amplify(pair, layout, _cfg(), AllCoherent(), control=" ", progress=False)
    with pytest.raises(ValueError, match="either beta"):
        amplified_generate(pair, PROMPTS, 1.0, side="ft", temperature=1.0, max_new_tokens=2, seed=0)
    assert not layout.root.exists()


# -- the command line ------------------------------------------------------------------------------


@pytest.fixture
def dirs(tmp_path):
    return str(save_tiny(tmp_path, "llama", 0)), str(save_tiny(tmp_path, "llama", 1))


def _diff(tmp_path, base, ft, *extra):
    from difflens.cli import app

    return CliRunner().invoke(app, ["diff", str(tmp_path / "run"), "--base", base, "--finetuned", ft, *extra])


def test_cli_amplify(tmp_path, dirs, monkeypatch):
    # two prompts instead of steering's twenty (the offline grader scores every sample under the tiny base)
    monkeypatch.setattr(amp, "STEERING_PROMPTS", ("tell me a story", "hello"))
    r = _diff(tmp_path, *dirs, "--methods", "amplify", "--betas", "1,4", "--amp-samples", "1", "--amp-tokens", "4")
    assert r.exit_code == 0, r.output
    out = " ".join(r.output.split())
    assert "amplification" in out and "chosen β" in out
    res = json.loads((tmp_path / "run" / "methods" / "wiki" / "amplify.json").read_text())
    assert res["betas"] == [1.0, 4.0] and res["samples_per_prompt"] == 1 and res["max_new_tokens"] == 4
    lines = (tmp_path / "run" / "methods" / "wiki" / "amplify.samples.jsonl").read_text().splitlines()
    assert len(lines) == 2 * 3 and AmplifySample.model_validate_json(lines[0]).role == "amplified"


@pytest.mark.parametrize("args,message", [
    (["--betas", "-1,2"], "--betas: every β must be a finite number ≥ 0"),
    (["--betas", "1,x"], "--betas: 'x' is not a number"),
    (["--betas", ","], "--betas: give at least one β"),
    (["--amp-samples", "0"], "--amp-samples: input should be greater than or equal to 1"),
    (["--amp-tokens", "0"], "--amp-tokens: input should be greater than or equal to 1"),
    (["--methods", "amplify,pca"], "unknown method 'pca'; choose from mining, kl, amplify"),
])
def test_cli_bad_amplify_input_before_any_model_loads(tmp_path, dirs, no_model_loads, args, message):
    r = _diff(tmp_path, *dirs, *(["--methods", "amplify"] if "--methods" not in args else []), *args)
    out = " ".join(r.output.split())
    assert r.exit_code == 2, r.output
    assert out.startswith("error: ") and message in out and "Traceback" not in out, out
    assert not (tmp_path / "run").exists()
