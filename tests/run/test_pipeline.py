"""`difflens run`: resumption after an interrupted stage; more steering positions keep finished ones."""
from __future__ import annotations

import json

import pytest

from conftest import save_tiny, write_run_config
from difflens.errors import DifflensError
from difflens.run.config import load_config
from difflens.run.pipeline import Runner


def test_run_resumes_after_failed_stage(tmp_path, corpus_file, monkeypatch):
    base, ft = save_tiny(tmp_path, "llama", 0), save_tiny(tmp_path, "llama", 1)
    cfg_path = write_run_config(tmp_path, out=str(tmp_path / "run"), base=str(base), finetuned=str(ft),
                      datasets=[str(corpus_file)], samples=20, layers=[2], positions=3, batch_size=10,
                      stages=["collect", "lens", "steer", "report"],
                      steering={"positions": [1], "search_iters": 2, "refine_iters": 1, "search_samples": 2,
                                "min_coherent": 1, "final_samples": 1, "max_new_tokens": 4,
                                "prompts": ["tell me a story"]})
    cfg = load_config(cfg_path)

    import difflens.run.stages as stages

    real = stages.find_threshold

    def broken(*a, **k):
        raise DifflensError("grader endpoint went away")

    monkeypatch.setattr(stages, "find_threshold", broken)
    with pytest.raises(DifflensError, match="went away"):
        Runner(cfg, progress=False).run()
    layout = Runner(cfg, progress=False).layout
    collected = layout.collect_file(str(corpus_file), 2)
    lens = layout.patchscope(str(corpus_file), 2)
    assert collected.exists() and lens.exists() and not layout.steering(str(corpus_file), 2).exists()
    # unsteered generations made before the failure were kept for the resumed run
    partial = json.loads(layout.steering_partial(str(corpus_file), 2).read_text())
    assert any(g["position"] is None for g in partial["generations"])
    stamps = (collected.stat().st_mtime_ns, lens.stat().st_mtime_ns)

    monkeypatch.setattr(stages, "find_threshold", real)
    status = Runner(cfg, progress=False).run()
    assert status == {"collect": "done", "lens": "done", "steer": "done", "report": "done"}
    assert (collected.stat().st_mtime_ns, lens.stat().st_mtime_ns) == stamps  # not recomputed
    assert layout.steering(str(corpus_file), 2).exists() and layout.report().exists()
    assert "tell me a story" in layout.report().read_text()


def test_more_steering_positions_keep_finished_ones(tmp_path, corpus_file, monkeypatch):
    base, ft = save_tiny(tmp_path, "llama", 0), save_tiny(tmp_path, "llama", 1)
    cfg = load_config(write_run_config(tmp_path, out=str(tmp_path / "run"), base=str(base), finetuned=str(ft),
                             datasets=[str(corpus_file)], samples=10, layers=[2], positions=3, batch_size=10,
                             stages=["collect", "steer"],
                             steering={"positions": [1], "search_iters": 1, "refine_iters": 0, "search_samples": 1,
                                       "min_coherent": 1, "final_samples": 1, "max_new_tokens": 2,
                                       "prompts": ["why"]}))
    Runner(cfg, progress=False).run()
    import difflens.run.stages as stages

    seen = []
    real = stages.find_threshold

    def counting(*a, **k):
        seen.append(k["position"])
        return real(*a, **k)

    monkeypatch.setattr(stages, "find_threshold", counting)
    more = cfg.model_copy(update={"steering": cfg.steering.model_copy(update={"positions": [1, 2]})})
    Runner(more, progress=False).run()
    assert seen == [2]
    from difflens.rundir import artifacts as A

    res = A.load(A.SteeringResult, Runner(more, progress=False).layout.steering(str(corpus_file), 2))
    assert [t.position for t in res.thresholds] == [1, 2]


def test_methods_stage_runs_every_method_and_its_control_then_skips_adl(tmp_path, corpus_file):
    """`methods: [mining, kl, amplify]` without adl: collect/lens/steer are skipped, the methods stage writes
    each method's result and the noise control's beside it, the evaluation gets its methods block, the
    report renders; a rerun reuses every result."""
    base, ft = save_tiny(tmp_path, "llama", 0), save_tiny(tmp_path, "llama", 1)
    cfg = load_config(write_run_config(
        tmp_path, out=str(tmp_path / "run"), base=str(base), finetuned=str(ft), datasets=[str(corpus_file)],
        methods=["mining", "kl", "amplify"], stages=["collect", "lens", "steer", "methods", "report"],
        diff={"samples": 6, "tokens": 4, "batch_size": 3, "control": "noise",
              "amplify": {"prompts": ["tell me a story"], "samples": 1, "max_new_tokens": 3, "betas": [1.0],
                          "threshold_prompts": ["why"], "search_samples": 2, "min_coherent": 1,
                          "calibration_samples": 2}}))
    status = Runner(cfg, progress=False).run()
    assert status == {"collect": "skipped", "lens": "skipped", "steer": "skipped", "methods": "done",
                      "report": "done"}
    layout = Runner(cfg, progress=False).layout
    ds = str(corpus_file)
    for m in ("mining", "kl", "amplify"):
        assert layout.method_result(ds, m).exists() and layout.method_result(ds, m, "noise").exists(), m
    ctl = json.loads(layout.method_result(ds, "amplify", "noise").read_text())
    real = json.loads(layout.method_result(ds, "amplify").read_text())
    assert ctl["chosen_beta"] == real["chosen_beta"] and ctl["grid"] == []  # the control at the real pair's β
    assert not layout.manifest.exists() and "Diff mining" in layout.report().read_text()
    stamps = [layout.method_result(ds, m).stat().st_mtime_ns for m in ("mining", "kl", "amplify")]
    Runner(cfg, progress=False).run()
    assert [layout.method_result(ds, m).stat().st_mtime_ns for m in ("mining", "kl", "amplify")] == stamps
