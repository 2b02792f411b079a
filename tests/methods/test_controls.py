"""The noise control pair: the base model against itself with small random weight noise. Scale 0 is the
base model itself (KL exactly 0); a matched scale copies each tensor's finetuning change norm; the noise
is a function of the seed; control results live in control-<name>/ beside, never over, the real ones,
and a killed control pass resumes to the uninterrupted result."""
from __future__ import annotations

import json

import pytest
import torch

from conftest import save_tiny, save_tiny_adapter
from methods_helpers import text_corpus, tiny_pair
from difflens.errors import ConfigError, RunDirError
from difflens.methods import DiffMining, PassConfig, TokenKL, load_result, open_examples, run_methods
from difflens.models.arch import ArchAdapter, unwrap
from difflens.models.noise import FALLBACK_SIGMA, noise_pair
from difflens.rundir.layout import RunLayout


def _methods():
    return [DiffMining(top_k=7, top_n=20, chunk_elements=900), TokenKL(layer=1, preview=2)]


def _params(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in unwrap(model).named_parameters()}


def _strip(res):
    return res.model_dump(exclude={"seconds"})


@pytest.fixture
def setup(tmp_path):
    return tiny_pair(tmp_path), text_corpus(tmp_path, n=40)


def test_scale_zero_is_the_base_model_itself(setup, tmp_path):
    pair, corpus = setup
    ctl = noise_pair(pair, scale=0.0)
    assert all(torch.equal(a, b) for a, b in zip(_params(ctl.ft_lm.model).values(), _params(pair.base_lm.model).values()))
    layout = RunLayout(tmp_path / "run")
    N, T = 9, 8
    mining = DiffMining(top_k=7, top_n=20)
    res = run_methods(ctl, layout, [mining, TokenKL(layer=1)],
                      PassConfig(dataset=str(corpus), samples=N, tokens=T, batch_size=4), progress=False,
                      control="noise")
    kl = res["kl"]
    assert kl.stats["kl"].max == 0.0 and kl.stats["kl"].mean == 0.0 and kl.stats["norm"].max == 0.0
    assert kl.stats["kl"].by_position == [0.0] * T
    assert kl.stats["cos"].max < 1e-6
    assert kl.stats["ent"].mean > 0  # the baseline does not depend on a difference
    with open_examples(layout, str(corpus), "noise") as store:
        for e in store.top("kl_max", 0, N):
            assert e.values["kl"] == [0.0] * T and e.values["norm"] == [0.0] * T
    # mining: no id is ever raised, every difference is 0
    assert int(mining.counts["positive_count"].sum()) == 0
    for ranking in res["mining"].rankings.values():
        assert all(e.positive_fraction == 0.0 and e.mean_diff == 0.0 for e in ranking)


@pytest.mark.parametrize("family", ["llama", "gpt2"])  # gpt2 ties its input and output embeddings
def test_matched_noise_has_each_tensors_finetuning_change_norm(tmp_path, family):
    pair = tiny_pair(tmp_path, family)
    ctl = noise_pair(pair)  # "matched" is the default
    assert ctl.control["scale"] == "matched" and ctl.control["sigma"] is None and ctl.control["fallback"] is None
    b, f, n = _params(pair.base_lm.model), _params(pair.ft_lm.model), _params(ctl.ft_lm.model)
    assert b.keys() == n.keys()
    total_change = total_w = 0.0
    for name in b:
        change = float((f[name] - b[name]).norm())
        assert float((n[name] - b[name]).norm()) == pytest.approx(change, rel=1e-4, abs=1e-6), name
        total_change, total_w = total_change + change ** 2, total_w + float(b[name].norm()) ** 2
        if change > 0:  # the same size, not the same direction
            assert not torch.allclose(n[name] - b[name], f[name] - b[name], rtol=0.1, atol=0)
    assert ctl.control["relative_norm"] == pytest.approx((total_change / total_w) ** 0.5, rel=1e-4)
    assert ctl.control["matched_to"]["fingerprint"] == pair.ft_lm.fingerprint
    if family == "gpt2":  # a tied tensor is noised once and stays tied
        inner = unwrap(ctl.ft_lm.model)
        assert inner.lm_head.weight is inner.transformer.wte.weight
    # the real pair is untouched
    assert all(torch.equal(b[k], v) for k, v in _params(pair.base_lm.model).items())


def test_the_noise_is_a_function_of_scale_and_seed(setup):
    pair, _ = setup
    a, a2 = noise_pair(pair, scale=0.01, seed=3), noise_pair(pair, scale=0.01, seed=3)
    other_seed, other_scale, matched = noise_pair(pair, scale=0.01, seed=4), noise_pair(pair, scale=0.02, seed=3), \
        noise_pair(pair, seed=3)
    pa, pa2, po = _params(a.ft_lm.model), _params(a2.ft_lm.model), _params(other_seed.ft_lm.model)
    assert all(torch.equal(pa[k], pa2[k]) for k in pa)
    assert all(not torch.equal(pa[k], po[k]) for k in pa)
    # σ · rms(W) per tensor: ‖noise‖ ≈ σ ‖W‖
    assert a.control["relative_norm"] == pytest.approx(0.01, rel=0.05)
    fps = [x.describe()["finetuned"]["fingerprint"] for x in (a, a2, other_seed, other_scale, matched)]
    assert fps[0] == fps[1] and len(set(fps)) == 4 and pair.base_lm.fingerprint not in fps
    d = a.describe()
    assert d["finetuned"]["spec"] == f"noise:{pair.base_lm.source.spec}"
    assert d["base"] == pair.describe()["base"]
    assert d["control"]["seed"] == 3 and d["control"]["scale"] == "0.01" and d["control"]["base"] == d["base"]["fingerprint"]
    for bad in ("-1", "big", float("nan"), -0.5):
        with pytest.raises(ConfigError, match="--control-scale"):
            noise_pair(pair, scale=bad)


def test_control_results_land_in_their_own_directory(setup, tmp_path, monkeypatch):
    pair, corpus = setup
    ds = str(corpus)
    layout = RunLayout(tmp_path / "run")
    cfg = PassConfig(dataset=ds, samples=7, tokens=8, batch_size=3)
    real = run_methods(pair, layout, _methods(), cfg, progress=False)
    real_dir = layout.methods_dir(ds)
    before = {p.name: p.read_bytes() for p in real_dir.iterdir() if p.is_file()}
    ctl_pair = noise_pair(pair, scale=0.01)
    ctl = run_methods(ctl_pair, layout, _methods(), cfg, progress=False, control="noise")
    cdir = layout.methods_dir(ds, "noise")
    assert cdir == real_dir / "control-noise"
    assert {p.name for p in cdir.iterdir()} >= {"mining.json", "mining.safetensors", "kl.json", "kl.sqlite",
                                                "progress.json"}
    assert {p.name: p.read_bytes() for p in real_dir.iterdir() if p.is_file()} == before
    assert {p.name for p in real_dir.iterdir() if p.is_dir()} == {"control-noise"}
    for name in ("mining", "kl"):
        assert real[name].control is None and ctl[name].control == "noise"
        assert json.loads(layout.method_result(ds, name, "noise").read_text())["control"] == "noise"
        assert ctl[name].fingerprint != real[name].fingerprint
        assert ctl[name].models["finetuned"]["spec"].startswith("noise:")
        assert load_result(layout, ds, name, "noise") == ctl[name] and load_result(layout, ds, name) == real[name]
    with open_examples(layout, ds, "noise") as store:
        assert store.count() == 7
    # both are reused on a rerun, neither recomputed
    monkeypatch.setattr(ArchAdapter, "capture", lambda *a, **k: pytest.fail("a forward pass ran"))
    assert run_methods(pair, layout, _methods(), cfg, progress=False) == real
    assert run_methods(ctl_pair, layout, _methods(), cfg, progress=False, control="noise") == ctl


def test_the_control_name_is_part_of_the_fingerprint(setup, tmp_path):
    pair, corpus = setup
    cfg = PassConfig(dataset=str(corpus), samples=4, tokens=8)
    ctl_pair = noise_pair(pair, scale=0.01)
    a = run_methods(ctl_pair, RunLayout(tmp_path / "a"), [DiffMining(top_k=3)], cfg, progress=False, control="noise")
    b = run_methods(ctl_pair, RunLayout(tmp_path / "b"), [DiffMining(top_k=3)], cfg, progress=False, control="other")
    assert a["mining"].fingerprint != b["mining"].fingerprint
    with pytest.raises(ConfigError, match="needs a name"):
        run_methods(ctl_pair, RunLayout(tmp_path / "c"), [DiffMining(top_k=3)], cfg, progress=False, control=" ")


def test_a_control_pair_is_checked_against_the_runs_base_only(setup, tmp_path):
    pair, corpus = setup
    layout = RunLayout(tmp_path / "run").ensure()
    layout.manifest.write_text(json.dumps({"models": pair.describe()}))
    cfg = PassConfig(dataset=str(corpus), samples=4, tokens=8)
    ctl_pair = noise_pair(pair, scale=0.01)
    run_methods(ctl_pair, layout, [DiffMining(top_k=3)], cfg, progress=False, control="noise")  # ft differs: fine
    with pytest.raises(RunDirError, match="another model pair"):  # not as the run's own pair
        run_methods(ctl_pair, layout, [DiffMining(top_k=3)], cfg, progress=False)
    models = pair.describe()
    models["base"]["fingerprint"] = "0" * 16
    layout.manifest.write_text(json.dumps({"models": models}))
    with pytest.raises(RunDirError, match="another model pair.*base"):
        run_methods(ctl_pair, layout, [DiffMining(top_k=4)], cfg, progress=False, control="noise")


def test_killed_control_pass_resumes_to_the_uninterrupted_result(setup, tmp_path):
    import sqlite3

    def rows(path):
        with sqlite3.connect(path) as c:
            return c.execute("SELECT * FROM samples ORDER BY sample").fetchall()

    pair, corpus = setup
    ds = str(corpus)
    ctl_pair = noise_pair(pair, scale=0.05, seed=1)
    cfg = PassConfig(dataset=ds, samples=22, tokens=8, batch_size=3, checkpoint_every=2)
    full_layout = RunLayout(tmp_path / "full")
    full = run_methods(ctl_pair, full_layout, _methods(), cfg, progress=False, control="noise")
    layout = RunLayout(tmp_path / "killed")
    with pytest.raises(KeyboardInterrupt):
        run_methods(ctl_pair, layout, _methods(), cfg, progress=False, stop_after_batches=3, control="noise")
    assert torch.load(layout.methods_partial(ds, "noise"), weights_only=True)["n_done"] == 6
    assert not layout.methods_partial(ds).exists() and not layout.methods_progress(ds).exists()
    with pytest.raises(KeyboardInterrupt):
        run_methods(ctl_pair, layout, _methods(), cfg, progress=False, stop_after_batches=2, control="noise")
    assert torch.load(layout.methods_partial(ds, "noise"), weights_only=True)["n_done"] == 12
    resumed = run_methods(ctl_pair, layout, _methods(), cfg, progress=False, control="noise")
    for name in ("mining", "kl"):
        assert _strip(resumed[name]) == _strip(full[name]), name
    assert rows(layout.method_store(ds, "kl", "noise")) == rows(full_layout.method_store(ds, "kl", "noise"))
    assert not layout.methods_partial(ds, "noise").exists()
    assert json.loads(layout.methods_progress(ds, "noise").read_text())["status"] == "done"


def test_an_adapter_pair_falls_back_to_a_float_scale_and_keeps_its_base(tmp_path):
    from difflens.models.pair import load_pair
    from difflens.models.sources import load_model

    base_dir = save_tiny(tmp_path, "llama", 0)
    _, adapter_dir = save_tiny_adapter(tmp_path, base_dir, r=4, target_modules=["q_proj", "v_proj"],
                                       init_lora_weights=False)
    pair = load_pair(str(base_dir), str(adapter_dir))
    assert pair.shared_adapter
    said: list[str] = []
    ctl = noise_pair(pair, warn=said.append)
    assert ctl.control["sigma"] == FALLBACK_SIGMA and "adapter" in ctl.control["fallback"] and "adapter" in said[0]
    assert ctl.control["relative_norm"] == pytest.approx(FALLBACK_SIGMA, rel=0.05)
    assert not hasattr(unwrap(ctl.ft_lm.model).model.layers[0].self_attn.q_proj, "lora_A")  # no adapter layers
    x = torch.tensor([[5, 9, 11, 30, 7, 8]])
    plain = load_model(str(base_dir)).model
    zero = noise_pair(pair, scale=0.0)
    with torch.no_grad():
        want = plain(input_ids=x).logits
        with zero.side("base") as m:
            got_base = m(input_ids=x).logits
        with zero.side("ft") as m:
            got_ft = m(input_ids=x).logits
        with pair.side("ft") as m:  # the real pair keeps its adapter
            adapted = m(input_ids=x).logits
    torch.testing.assert_close(got_base, want)
    torch.testing.assert_close(got_ft, want)
    assert (adapted - want).abs().max() > 1e-4
