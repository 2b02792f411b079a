"""The FLOP arithmetic of bench/floor.py (difflens.run.cost) on tiny configs: the formulas, not timings."""
from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from conftest import save_tiny
from difflens.models.pair import load_pair
from difflens.run import cost


@pytest.fixture
def shape(tmp_path):
    p = str(save_tiny(tmp_path, "llama", 0))
    return cost.ModelShape.of_pair(load_pair(p, p))


def test_shape_of_a_tiny_llama(shape):
    # q, o: 32×32; k, v: 32×16 (2 kv heads × 8); mlp: 3 × 32×64; the norms (1-D) hold no matmul weights
    assert shape.layer_params == (9216,) * 4
    assert shape.unembed_params == 512 * 32 and shape.attn_width == 32 and shape.n_layers == 4
    assert shape.kv_width == 16  # 2 key/value heads × 8


def test_kv_read_bytes_equal_the_cache_a_decode_loop_holds(tmp_path, shape):
    """Each decode step attends to the whole cache, its own new key and value included: what
    transformers' cache holds after that step."""
    from transformers import DynamicCache

    p = str(save_tiny(tmp_path, "llama", 0))
    model = load_pair(p, p).ft_lm.model
    prompt, new = 5, 4
    cache = DynamicCache(config=model.config)
    read = 0
    with torch.no_grad():
        model(input_ids=torch.randint(4, 100, (1, prompt)), past_key_values=cache, use_cache=True)
        for _ in range(new - 1):  # new tokens: the prefill gives the first, each step one more
            model(input_ids=torch.randint(4, 100, (1, 1)), past_key_values=cache, use_cache=True)
            read += sum(layer.keys.numel() + layer.values.numel() for layer in cache.layers) * 4
    assert cost.kv_read_bytes(shape, prompt, new) == read


def test_matmul_part_equals_torch_flop_counter(tmp_path, shape):
    p = str(save_tiny(tmp_path, "llama", 0))
    model = load_pair(p, p).ft_lm.model
    T = 7
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        model(input_ids=torch.randint(4, 100, (1, T)), use_cache=False)
    attention = 4 * 32 * 4 * T * (T + 1) / 2
    assert cost.forward_flops(shape, T, logits=T) - attention == fc.get_total_flops()


def test_formulas(shape):
    P, U, a = 9216, 512 * 32, 32
    # F(T, l, m) = 2·T·P(l) + 4·a·l·T(T+1)/2 + 2·m·P_U
    assert cost.forward_flops(shape, 3, layers=2, logits=1) == 2 * 3 * 2 * P + 4 * a * 2 * 6 + 2 * U
    # layers 3..3 only, one token after 5 cached ones: attention over 6 keys
    assert cost.forward_flops(shape, 1, start=3, logits=1, past=5) == 2 * P + 4 * a * 6 + 2 * U
    # generation: prefill of p tokens (logits at the last) + n-1 decode steps on the cache
    gen = cost.generation_flops(shape, 2, 3)
    step = lambda ctx: 2 * 4 * P + 2 * U + 4 * a * 4 * ctx  # noqa: E731
    assert gen == pytest.approx(cost.forward_flops(shape, 2, logits=1) + step(3) + step(4))
    assert cost.steer_flops(shape, [(2, 3), (2, 3)]) == pytest.approx(2 * gen)
    assert cost.amplify_flops(shape, [(2, 3)]) == pytest.approx(2 * gen)
    # collect: both models, stopped after layer ℓ (ℓ+1 layers), no logits
    f = cost.collect_flops(shape, 1, [5, 5], [8])
    assert f["samples"] == 2 * 2 * cost.forward_flops(shape, 5, layers=2)
    assert f["eta"] == 2 * cost.forward_flops(shape, 8, layers=2)
    # causal: base to ℓ and clean ft once per text, then V × the layers above ℓ with logits
    c = cost.causal_flops(shape, 1, [6], 10, chat_lengths=[4])
    assert c == pytest.approx(cost.forward_flops(shape, 6, layers=2) + cost.forward_flops(shape, 6, logits=6)
                              + 10 * (2 * 6 * 2 * P + 4 * a * 2 * 21 + 2 * 6 * U)
                              + cost.forward_flops(shape, 4, layers=2))
    assert cost.methods_flops(shape, 3, 4) == 2 * 3 * cost.forward_flops(shape, 4, logits=4)
    assert cost.logit_lens_flops(shape, 7) == 2 * 7 * U
    # Patchscope: prefixes once per reading model, then per vector × row one token above ℓ
    ps = cost.patchscope_flops(shape, 1, [4, 4], vectors=3, rows=6, reader_sides=2)
    assert ps == pytest.approx(2 * 2 * cost.forward_flops(shape, 3)
                               + 3 * 6 * cost.forward_flops(shape, 1, start=2, logits=1, past=3))
    g = cost.grading_flops(shape, 5, [3, 0])
    assert g == cost.forward_flops(shape, 5, logits=1) + cost.forward_flops(shape, 3, logits=3, past=5)


def test_rate_and_estimates():
    r = cost.matmul_rate("cpu", seconds=0.05)
    assert r > 1e8 and cost.matmul_rate("cpu") == r  # measured once per process
    assert cost.estimate_seconds(1e12, 1e11, efficiency=0.5) == 20
    assert cost.format_seconds(20) == "20 s" and cost.format_seconds(600) == "10 min"


def test_rows_of_one_group_count_their_prompt_once(shape):
    rows = [(12, 5), (12, 7), (9, 4), (12, 5)]
    alone = cost.steer_flops(shape, rows)
    assert alone == sum(cost.generation_flops(shape, p, n) for p, n in rows)
    shared = cost.steer_flops(shape, rows, ["a", "a", "b", "c"])  # rows 0 and 1: one prompt, one vector
    assert shared == pytest.approx(alone - cost.forward_flops(shape, 12, logits=1))
    assert cost.steer_flops(shape, rows, [0, 1, 2, 3]) == pytest.approx(alone)
    with pytest.raises(ValueError, match="group keys"):
        cost.steer_flops(shape, rows, ["a"])


def test_the_steer_estimate_counts_one_prefill_per_prompt_and_alpha(shape):
    from difflens.adl.steering import SteeringConfig

    cfg = SteeringConfig(search_iters=1, refine_iters=0, search_samples=3, prompts=["a", "b"], final_samples=2,
                         random_control=False, max_new_tokens=6)
    p, n = 32, 6
    k = len(cfg.threshold_prompts)
    # the search's one α (3 samples, one prompt), the finals (2 prompts × 2 samples), the calibration
    # (k prompts × 6 samples) and the unsteered finals (2 prompts × 2): rows and their prefill groups
    groups = [0] * 3 + [1, 1, 2, 2] + [3 + i // 6 for i in range(6 * k)] + [10, 10, 11, 11]
    gen = cost.steer_flops(shape, [(p, n)] * len(groups), groups)
    grade = (3 + 6 * k + 4) * cost.forward_flops(shape, n, logits=n, past=p)
    assert cost.steer_flops_estimate(shape, cfg, 1, prompt_tokens=p) == pytest.approx(gen + grade)


def test_a_16_bit_cpu_stage_is_announced_with_its_float32_overhead(tmp_path, monkeypatch, capsys):
    """bfloat16 on a CPU speeds the matmuls, not the KV-cache and activation reads, elementwise ops
    and sampling: the announced time (steer's, and collect's and the causal effect's through
    ``announce``) adds those at the float32 rate; in float32, or on an accelerator, it is the FLOPs at
    the rate × the ratio."""
    from difflens.adl.steering import SteeringConfig
    from difflens.run import stages

    p = str(save_tiny(tmp_path, "llama", 0))
    pair = load_pair(p, p)
    rates = {"float32": 1e9, "bfloat16": 4e9}
    monkeypatch.setattr(cost, "matmul_rate", lambda device, dtype="float32", **k: rates[dtype])
    monkeypatch.setattr(cost, "format_seconds", lambda s: f"{s:.6g}s")
    cfg = SteeringConfig()
    flops = cost.steer_flops_estimate(cost.ModelShape.of_pair(pair), cfg, 2, grid=1)
    said = {}
    for precision in ("float32", "bfloat16"):
        pair.precision = precision
        stages._steer_estimate(pair, cfg, 2, 1)
        said[precision] = capsys.readouterr().err
    r = cost.STEER_FLOOR_RATIO
    assert f"about {flops / 1e9 * r:.6g}s" in said["float32"]
    assert f"about {flops / 4e9 + flops / 1e9 * (r - 1):.6g}s" in said["bfloat16"]
    assert "4 GFLOP/s" in said["bfloat16"]
    # collect's and the causal effect's announcements count the same way; an accelerator as before
    assert cost.expected_seconds(1e12, "cpu", "bf16-fp32res", 1.5) == (1e12 / 4e9 + 1e12 / 1e9 * 0.5, 4e9)
    assert cost.expected_seconds(1e12, "cpu", "float32", 1.5) == (1e12 / 1e9 * 1.5, 1e9)
    assert cost.expected_seconds(1e12, "cuda:0", "bfloat16", 1.5) == (1e12 / 4e9 * 1.5, 4e9)
    assert cost.announce("collecting", 1e12, "cpu", "bfloat16", 1.5) == 1e12 / 4e9 + 1e12 / 1e9 * 0.5
    assert f"about {1e12 / 4e9 + 1e12 / 1e9 * 0.5:.6g}s" in capsys.readouterr().err


def _floor_bench():
    """bench/floor.py as a module (the bench directory on the path for its own imports)."""
    import importlib.util
    import sys
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "bench" / "floor.py"
    spec = importlib.util.spec_from_file_location("difflens_floor_bench", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def test_the_decode_breakdown_accounts_for_every_op(tmp_path):
    """bench/floor.py's decode part on a tiny Llama: the kinds add up to the profiled ops (each op
    counted once, the ranges' own Python left out), matmuls with weights, attention and the draw each
    show up, and Python and dispatch is the wall left over."""
    from types import SimpleNamespace

    from torch.profiler import ProfilerActivity, profile

    floor = _floor_bench()
    p = str(save_tiny(tmp_path, "llama", 0))
    pair = load_pair(p, p)
    shape = cost.ModelShape.of_pair(pair)
    rows = floor.Rows(1e11)
    args = SimpleNamespace(decode_positions=2, search_samples=3, max_new_tokens=6, steer_seed=0, device="cpu")
    kinds = floor.bench_decode(pair, torch.randn(pair.arch.hidden_size), 2.0, args, shape, rows, layer=1)
    assert set(kinds) == set(floor.KINDS) | {"Python and dispatch"}
    assert all(kinds[k] > 0 for k in floor.KINDS), kinds
    got = {r["stage"]: r for r in rows.rows}
    total = got["decode: a search round"]
    assert total["note"].startswith("18 rows")  # 2 vectors × 3 threshold prompts × 3 samples
    assert "the same tokens" in total["note"]  # the profiled rerun sampled what the timed run did
    assert got["decode: linear layers"]["flops"] < total["flops"]  # attention's FLOPs are the rest
    # the kinds and the time between ops split the (unprofiled) wall of the round
    assert kinds["Python and dispatch"] > 0 and sum(kinds.values()) == pytest.approx(total["wall_s"], abs=2e-3)
    assert got["decode: Python and dispatch"]["wall_s"] == pytest.approx(kinds["Python and dispatch"], abs=1e-3)

    # op_kinds itself: a range's ops count there, whatever their names, and so does the range's own time
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        with torch.profiler.record_function("difflens::draw"):
            torch.mm(torch.randn(8, 8), torch.randn(8, 8))
        torch.mm(torch.randn(8, 8), torch.randn(8, 8))
        torch.randn(4).exp()
        q = torch.randn(1, 2, 3, 4)
        torch.nn.functional.scaled_dot_product_attention(q, q, q)  # its kernels count as attention too
    split = floor.op_kinds(prof.events())
    ops = sum(e.self_cpu_time_total for e in prof.events()) / 1e6
    assert sum(split.values()) == pytest.approx(ops)
    own = next(e for e in prof.events() if e.name == "difflens::draw").self_cpu_time_total / 1e6
    mms = [e for e in prof.events() if e.name == "aten::mm"]
    inside = [e for e in mms if e.cpu_parent is not None and e.cpu_parent.name == "difflens::draw"]
    assert len(mms) == 2 and len(inside) == 1
    assert split["linear layers"] == pytest.approx(sum(e.self_cpu_time_total for e in mms if e not in inside) / 1e6)

    def under(e, name):
        while e is not None:
            if e.name == name:
                return True
            e = e.cpu_parent
        return False

    in_draw = sum(e.self_cpu_time_total for e in prof.events() if under(e, "difflens::draw")) / 1e6
    assert in_draw > own > 0 and split["sampling draw"] == pytest.approx(in_draw)
    under_sdpa = sum(e.self_cpu_time_total for e in prof.events()
                     if any("scaled_dot_product" in n for n in (e.name, getattr(e.cpu_parent, "name", "")))) / 1e6
    assert under_sdpa > 0 and split["attention"] >= under_sdpa
