"""The steer stage's generation backend: the run config's ``generation_backend`` and its vLLM options,
the refusal of ``vllm`` before any model loads when vLLM is missing, the HF default unchanged where it
matters (same fingerprint, no new field in steering.json; its generations rebuilt exactly, the unsteered
ones from the first search round's call they ride), and a stand-in backend really receiving the
final-generation calls whose texts end up in the artifacts. No vLLM needed."""
from __future__ import annotations

import io
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError
from rich.console import Console
from typer.testing import CliRunner

import difflens.backends as backends
from conftest import PassesEveryOther, write_run_config
from difflens.adl.steering import GenerationRequest, SteeringConfig, generate_many, generate_steered, steering_vectors
from difflens.backends import HFBackend
from difflens.errors import ConfigError
from difflens.graders import Graders, grader_identity
from difflens.rundir import artifacts as A
from difflens.run.config import RunConfig, SteeringSection, load_config, with_overrides
from difflens.rundir.layout import fingerprint, read_json
from difflens.run.pipeline import Runner
from difflens.run.stages import run_steer, steer_backend




GRADERS = Graders(coherence=PassesEveryOther(), scale=None, relevance=None)
STEER = dict(positions=[0, 1], search_iters=2, refine_iters=0, search_samples=2, min_coherent=2, final_samples=2,
             max_new_tokens=4, prompts=["hi", "tell me"], random_control=True)


@dataclass
class FakeBackend:
    """Stands in for vLLM: records every call, answers with texts naming the call."""

    name: str = "vllm"
    calls: list[dict] = field(default_factory=list)
    closed: bool = False

    def generate(self, prompts, *, layer, direction, alpha, eta, n, temperature, max_new_tokens, seed, side="ft"):
        k = len(self.calls)
        self.calls.append(dict(prompts=list(prompts), layer=layer, direction=direction, alpha=alpha, eta=eta, n=n,
                               temperature=temperature, max_new_tokens=max_new_tokens, seed=seed, side=side))
        return [[f"fake call {k} {p} #{s}" for s in range(n)] for p in prompts]

    def close(self):
        self.closed = True


@pytest.fixture
def no_vllm(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # import vllm → ImportError, also where it is installed




# -- the run config ----------------------------------------------------------------------------
def test_config_fields_validate(tmp_path):
    base = dict(out=tmp_path / "r", finetuned="organism:cake_bake")
    cfg = RunConfig(**base)
    assert cfg.generation_backend == "hf" and cfg.tensor_parallel_size == 1 and cfg.backend_options() == {}
    v = RunConfig(**base, generation_backend="vllm", tensor_parallel_size=2, vllm_gpu_memory_utilization=0.5)
    assert v.backend_options() == {"tensor_parallel_size": 2, "gpu_memory_utilization": 0.5}
    assert RunConfig(**base, generation_backend="vllm").backend_options() == {"tensor_parallel_size": 1}
    for bad in (dict(generation_backend="tgi"), dict(generation_backend="vllm", tensor_parallel_size=0),
                dict(generation_backend="vllm", vllm_gpu_memory_utilization=1.5)):
        with pytest.raises(ValidationError):
            RunConfig(**base, **bad)
    with pytest.raises(ValidationError, match="generation_backend: vllm only"):
        RunConfig(**base, tensor_parallel_size=2)  # a vLLM option without vLLM: refused, not ignored
    p = write_run_config(tmp_path, out=str(tmp_path / "r"), finetuned="x", generation_backend="vlm")
    with pytest.raises(ConfigError, match="generation_backend"):
        load_config(p)
    assert with_overrides(cfg, generation_backend="vllm", tensor_parallel_size=4).tensor_parallel_size == 4
    with pytest.raises(ConfigError, match="tensor_parallel_size"):
        with_overrides(cfg, tensor_parallel_size=0)


def test_vllm_without_vllm_fails_before_any_model_loads(tmp_path, tiny_run, no_vllm, no_model_loads):
    _, layout, _ = tiny_run
    cfg = RunConfig(out=tmp_path / "new-run", finetuned="x", generation_backend="vllm")
    with pytest.raises(ConfigError, match=r"pip install 'difflens\[vllm\]'"):
        Runner(cfg)
    assert not (tmp_path / "new-run").exists()  # nothing written either
    # without a steer stage vLLM is not needed
    Runner(cfg.model_copy(update={"stages": ["collect"]}), console=Console(file=io.StringIO()))

    runner = CliRunner()
    (tmp_path / "yaml").mkdir()
    asks_vllm = write_run_config(tmp_path / "yaml", out=str(tmp_path / "cli-run"), finetuned="x",
                                 generation_backend="vllm").rename(tmp_path / "asks-vllm.yaml")
    plain = write_run_config(tmp_path / "yaml", out=str(tmp_path / "cli-run"), finetuned="x")
    for args in (["steer", str(layout.root), "--backend", "vllm"],
                 ["steer", str(layout.root), "--backend", "vllm", "--tensor-parallel-size", "2"],
                 ["run", str(asks_vllm)],
                 ["run", str(plain), "--backend", "vllm"],
                 ["demo", "--out", str(tmp_path / "demo"), "--backend", "vllm"],
                 ["sweep", "--finetuned", "x", "--out", str(tmp_path / "sweep"), "--backend", "vllm"]):
        r = runner.invoke(app_(), args)
        out = r.output.replace("\n", "")
        assert r.exit_code == 2 and "pip install 'difflens[vllm]'" in out, (args, r.output)
        assert "AssertionError" not in out
    for d in ("cli-run", "demo", "sweep"):
        assert not (tmp_path / d).exists()
    r = runner.invoke(app_(), ["steer", str(layout.root), "--tensor-parallel-size", "2"])
    assert r.exit_code == 2 and "--backend vllm only" in r.output.replace("\n", "")


def app_():
    from difflens.cli.main import app

    return app


# -- the HF default: fingerprint and file as before, generations rebuilt exactly -------------------
def test_hf_default_is_the_reference_path_unchanged(tiny_run):
    pair, layout, c = tiny_run
    cfg = SteeringConfig(**STEER)
    [res] = run_steer(pair, layout, GRADERS, cfg, progress=False)
    steering_file = layout.steering(c.dataset, c.layer)
    raw = json.loads(steering_file.read_text())
    assert "generation_backend" not in raw and res.generation_backend == "hf"  # the file as before backends
    # the stage fingerprint is the one computed before backends existed: earlier caches stay valid
    fp = fingerprint({"collect": read_json(layout.collect_stats(c.dataset))["fingerprint"], "layer": c.layer,
                      "cfg": cfg.identity(), "grader": grader_identity(GRADERS.coherence)})
    assert read_json(layout.stage_record(layout.stage_key("steer", c.dataset, c.layer)))["fingerprint"] == fp
    # the generations: the unsteered ones rode the first search round's call, after its search rows (each
    # position's first tested α, search_samples rows) and the calibration's answers to the threshold prompts
    # (2 · search_samples each, at the search temperature); the steered and random-control ones of every
    # position in one batch after the search (generate_many, a vector per row)
    gens = A.load_jsonl(A.Generation, layout.steering_generations(c.dataset, c.layer))
    n = cfg.search_samples
    first = [(res.thresholds[j].steps[0], c.delta[j]) for j in (0, 1)]
    search_rows = [(s.prompt, steering_vectors(d, [s.alpha], c.eta_ft)[0]) for s, d in first for _ in range(n)]
    calibration = [p for p in cfg.threshold_prompts for _ in range(2 * n)]
    finals = [p for p in cfg.prompts for _ in range(cfg.final_samples)]
    texts = generate_steered(pair, [p for p, _ in search_rows] + calibration + finals,
                             [v for _, v in search_rows] + [None] * (len(calibration) + len(finals)), layer=c.layer,
                             temperature=[cfg.search_temperature] * (len(search_rows) + len(calibration))
                             + [cfg.final_temperature] * len(finals), max_new_tokens=cfg.max_new_tokens, seed=cfg.seed)
    ride = texts[len(search_rows) + len(calibration):]
    expected = [A.Generation(prompt=p, position=None, alpha=0.0, sample=si, text=ride[pi * cfg.final_samples + si])
                for pi, p in enumerate(cfg.prompts) for si in range(cfg.final_samples)]
    assert res.unsteered_pass_rate == 0.5  # the calibration graded apart: every other of its texts passes
    jobs = [(j, v, res.alpha(j), ctl) for j in (0, 1)
            for v, ctl in ((c.delta[j], None), (c.vectors("random")[j], "random"))]
    outs = generate_many(pair, [GenerationRequest(cfg.prompts, v, a, cfg.final_samples) for _, v, a, _ in jobs],
                         layer=c.layer, eta=c.eta_ft, temperature=cfg.final_temperature,
                         max_new_tokens=cfg.max_new_tokens, seed=cfg.seed + 17)
    for (j, v, a, ctl), per in zip(jobs, outs):
        expected += [A.Generation(prompt=p, position=j, alpha=a, sample=si, text=t, control=ctl)
                     for p, texts in zip(cfg.prompts, per) for si, t in enumerate(texts)]
    assert [g.model_dump() for g in gens] == [g.model_dump() for g in expected]
    # an explicit HFBackend is the default, byte for byte
    before = (steering_file.read_bytes(), layout.steering_generations(c.dataset, c.layer).read_bytes())
    steering_file.unlink()
    run_steer(pair, layout, GRADERS, cfg, progress=False, backend=steer_backend(pair, layout, "hf"))
    assert (steering_file.read_bytes(), layout.steering_generations(c.dataset, c.layer).read_bytes()) == before
    assert isinstance(steer_backend(pair, layout), HFBackend)
    with pytest.raises(ConfigError, match="vllm generation backend only"):
        steer_backend(pair, layout, "hf", tensor_parallel_size=2)


# -- a backend really receives the final generations ---------------------------------------------
def test_injected_backend_gets_the_final_generations(tiny_run, monkeypatch):
    pair, layout, c = tiny_run
    fake, built = FakeBackend(), []

    def fake_backend_for_run(name, lay, **options):
        built.append((name, Path(lay.root), options))
        return fake

    monkeypatch.setattr(backends, "check_backend", lambda name: name)  # "vLLM is installed"
    monkeypatch.setattr(backends, "backend_for_run", fake_backend_for_run)
    hf_calls = []
    real_hf = HFBackend.generate

    def counting_hf(self, *a, **k):
        hf_calls.append(1)
        return real_hf(self, *a, **k)

    monkeypatch.setattr(HFBackend, "generate", counting_hf)

    def runner(**fields):
        cfg = RunConfig(out=layout.root, finetuned="unused", stages=["steer"], steering=SteeringSection(**STEER),
                        **fields)
        r = Runner(cfg, console=Console(file=io.StringIO()), progress=False)
        r._pair, r._graders = pair, GRADERS  # the tiny pair already loaded
        return r

    runner(generation_backend="vllm", tensor_parallel_size=2, vllm_gpu_memory_utilization=0.5).run()
    assert built == [("vllm", Path(layout.root), {"tensor_parallel_size": 2, "gpu_memory_utilization": 0.5})]
    assert fake.closed and not hf_calls  # every final generation went to the backend
    cfg = SteeringConfig(**STEER)
    res = A.load(A.SteeringResult, layout.steering(c.dataset, c.layer))
    assert res.generation_backend == "vllm"
    assert json.loads(layout.steering(c.dataset, c.layer).read_text())["generation_backend"] == "vllm"
    # unsteered first, then per position: δ̄_j at its threshold α, then the random direction at the same α
    expected = [(None, 0.0, None)] + [(j, res.alpha(j), d) for j in (0, 1)
                                      for d in (c.delta[j], c.vectors("random")[j])]
    assert len(fake.calls) == len(expected)
    for call, (j, alpha, direction) in zip(fake.calls, expected):
        assert call["prompts"] == cfg.prompts and call["layer"] == c.layer == 2 and call["side"] == "ft"
        assert call["alpha"] == alpha and call["eta"] == c.eta_ft and call["n"] == cfg.final_samples
        assert (call["temperature"], call["max_new_tokens"], call["seed"]) == \
            (cfg.final_temperature, cfg.max_new_tokens, cfg.seed + 17)
        assert (call["direction"] is None) if direction is None else torch.equal(call["direction"], direction)
    gens = A.load_jsonl(A.Generation, layout.steering_generations(c.dataset, c.layer))
    assert [g.text for g in gens] == [f"fake call {k} {p} #{s}" for k in range(len(expected))
                                      for p in cfg.prompts for s in range(cfg.final_samples)]
    assert [(g.position, g.control) for g in gens[::4]] == [(None, None), (0, None), (0, "random"), (1, None),
                                                            (1, "random")]
    # the backend is part of the fingerprint: the same backend reuses, the HF default recomputes
    runner(generation_backend="vllm", tensor_parallel_size=2).run()  # engine options alone change nothing
    assert len(fake.calls) == len(expected) and len(built) == 2
    runner().run()
    assert len(built) == 2  # hf: the run's own pair, no backend_for_run
    gens = A.load_jsonl(A.Generation, layout.steering_generations(c.dataset, c.layer))
    assert len(gens) == 5 * len(cfg.prompts) * cfg.final_samples and not any("fake" in g.text for g in gens)
    assert "generation_backend" not in json.loads(layout.steering(c.dataset, c.layer).read_text())


def test_steer_command_passes_backend_and_options(tiny_run, monkeypatch):
    _, layout, c = tiny_run
    fake, built = FakeBackend(), []
    monkeypatch.setattr(backends, "check_backend", lambda name: name)
    monkeypatch.setattr(backends, "backend_for_run", lambda name, lay, **o: built.append((name, o)) or fake)
    r = CliRunner().invoke(app_(), ["steer", str(layout.root), "--backend", "vllm", "--tensor-parallel-size", "2",
                                    "--position", "0", "--samples", "1", "--max-new-tokens", "3"])
    assert r.exit_code == 0, r.output
    assert built == [("vllm", {"tensor_parallel_size": 2})] and fake.closed
    assert len(fake.calls) == 3 and [k["n"] for k in fake.calls] == [1, 1, 1]  # unsteered, δ̄_0, random control
    assert "fake call 1" in r.output  # the steered sample shown is the backend's
    assert A.load(A.SteeringResult, layout.steering(c.dataset, c.layer)).generation_backend == "vllm"


# -- final generations riding the search rounds ---------------------------------------------------
def test_final_generations_ride_the_rounds_after_their_search_and_resume(tiny_run, monkeypatch):
    """A position whose search has ended hands its final jobs to the rounds still to come; their
    texts are saved as the round ends (an interruption keeps them), the other positions' jobs run
    after the search, and the generations come out in the same order either way."""
    import difflens.run.stages as ST

    pair, layout, c = tiny_run
    cfg = SteeringConfig(**STEER)
    rides = []

    def th(j, alpha):
        return A.SteeringThreshold(position=j, alpha=alpha, per_prompt=[alpha], steps=[], generations_used=0,
                                   grader_calls=0, min_coherent=1)

    def unsteered(prelude):  # the unsteered samples ride the first round's call
        prelude.done([f"unsteered {i}" for i in range(len(prelude.prompts))])

    def searching(pair_, grader, *, layer, directions, eta, cfg, on_done, riders, prelude, **kw):
        assert sorted(directions) == [0, 1] and riders is not None
        unsteered(prelude)
        on_done(th(0, 0.5))  # position 0's search ends first
        ride = riders(1000)
        rides.append(ride)
        assert riders(1000) is None  # both of its jobs went with the first ride
        # one row per prompt and sample: the steered job, then the random-direction control, at T_final
        n = len(cfg.prompts) * cfg.final_samples
        assert ride.prompts == [p for p in cfg.prompts for _ in range(cfg.final_samples)] * 2
        assert ride.temperature == cfg.final_temperature
        want = torch.stack([c.delta[0] / c.delta[0].norm(), c.vectors("random")[0] / c.vectors("random")[0].norm()])
        got = torch.stack([ride.vectors[0], ride.vectors[n]]) / (0.5 * eta)
        assert torch.allclose(got, want, atol=1e-5)
        ride.done([f"rode {i}" for i in range(2 * n)])
        raise KeyboardInterrupt  # killed mid-search, after the ride's call

    monkeypatch.setattr(ST, "find_thresholds", searching)
    with pytest.raises(KeyboardInterrupt):
        run_steer(pair, layout, GRADERS, cfg, progress=False)
    partial = json.loads(layout.steering_partial(c.dataset, c.layer).read_text())
    assert sorted(partial["thresholds"]) == ["0"]
    assert sum(g["text"].startswith("rode") for g in partial["generations"]) == 2 * len(cfg.prompts) * cfg.final_samples

    generated = []
    real = backends.final_generations_batch

    def counting(backend, jobs, **kw):
        generated.extend((j, ctl) for j, _, _, ctl in jobs)
        return real(backend, jobs, **kw)

    monkeypatch.undo()  # position 1 alone is left: its own search (find_threshold) runs for real
    monkeypatch.setattr(ST, "final_generations_batch", counting)
    [res] = run_steer(pair, layout, GRADERS, cfg, progress=False)
    assert generated == [(1, None), (1, "random")]  # position 0's rode along; not generated again
    gens = A.load_jsonl(A.Generation, layout.steering_generations(c.dataset, c.layer))
    rode = [g.text for g in gens if g.position == 0]
    assert rode == [f"rode {i}" for i in range(2 * len(cfg.prompts) * cfg.final_samples)]
    assert [g.control for g in gens if g.position == 0] == [None] * 4 + ["random"] * 4
    key = [(g.position is not None, g.position or 0, g.control or "", cfg.prompts.index(g.prompt), g.sample)
           for g in gens]
    assert key == sorted(key) and {g.position for g in gens} == {None, 0, 1}
    assert [t.position for t in res.thresholds] == [0, 1]


def test_a_resumed_stage_hands_earlier_positions_finals_to_the_first_round(tiny_run, monkeypatch):
    """Killed after position 0's search but before its final generations: on resume, with two
    positions still to search, position 0's jobs ride the first round's call."""
    import difflens.run.stages as ST

    pair, layout, c = tiny_run
    cfg = SteeringConfig(**{**STEER, "positions": [0, 1, 2]})

    def th(j, alpha):
        return A.SteeringThreshold(position=j, alpha=alpha, per_prompt=[alpha], steps=[], generations_used=0,
                                   grader_calls=0, min_coherent=1)

    def killed(pair_, grader, *, on_done, prelude, **kw):
        prelude.done([f"unsteered {i}" for i in range(len(prelude.prompts))])
        on_done(th(0, 0.5))
        raise KeyboardInterrupt

    monkeypatch.setattr(ST, "find_thresholds", killed)
    with pytest.raises(KeyboardInterrupt):
        run_steer(pair, layout, GRADERS, cfg, progress=False)
    offered = []

    def resumed(pair_, grader, *, directions, on_done, riders, prelude, **kw):
        assert sorted(directions) == [1, 2] and prelude is None  # the unsteered samples were saved
        ride = riders(1000)  # before any position of this run has finished
        offered.append(len(ride.prompts))
        ride.done([f"rode {i}" for i in range(len(ride.prompts))])
        for j in (1, 2):
            on_done(th(j, 0.25))
        return {j: th(j, 0.25) for j in (1, 2)}

    monkeypatch.setattr(ST, "find_thresholds", resumed)
    [res] = run_steer(pair, layout, GRADERS, cfg, progress=False)
    assert offered == [2 * len(cfg.prompts) * cfg.final_samples]  # position 0: steered and control
    gens = A.load_jsonl(A.Generation, layout.steering_generations(c.dataset, c.layer))
    assert [g.text for g in gens if g.position == 0] == [f"rode {i}" for i in range(offered[0])]
    assert {(g.position, g.control) for g in gens if g.position is not None} == \
        {(j, ctl) for j in (0, 1, 2) for ctl in (None, "random")}


def test_only_the_hf_backend_on_the_search_pair_takes_riders(tiny_run, monkeypatch):
    """vLLM (or an HF backend that would load another pair) samples the finals itself: no rides."""
    import difflens.run.stages as ST

    pair, layout, c = tiny_run
    cfg = SteeringConfig(**STEER)
    seen = []

    def search(pair_, grader, *, riders, **kw):
        seen.append(riders)
        raise KeyboardInterrupt

    monkeypatch.setattr(ST, "find_thresholds", search)
    # the unsteered finals without the backend: a lazy backend's pair stays unloaded
    monkeypatch.setattr(ST, "final_generations", lambda backend, **kw: [
        A.Generation(prompt=p, position=None, alpha=0.0, sample=s, text="u") for p in cfg.prompts
        for s in range(cfg.final_samples)])
    loads = []
    for backend in (FakeBackend(), HFBackend(pair_loader=lambda: loads.append(1) or pair), HFBackend(pair)):
        with pytest.raises(KeyboardInterrupt):
            run_steer(pair, layout, GRADERS, cfg, progress=False, backend=backend)
    assert seen[0] is None and seen[1] is None and seen[2] is not None
    assert not loads  # asking did not load a pair
