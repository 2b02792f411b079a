"""Layouts: the run directory and the $DIFFLENS_HOME cache are named in one place."""
from __future__ import annotations

from difflens.rundir.layout import Home, RunLayout, home


def test_home_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFLENS_HOME", str(tmp_path / "h"))
    h = home()
    assert h.models == tmp_path / "h" / "models" and h.models.is_dir()
    assert h.llm_cache == tmp_path / "h" / "llm_cache"
    assert h.organism("cake_bake", "smollm2", "full") == tmp_path / "h" / "organisms" / "cake_bake" / "smollm2" / "full"
    assert h.llm_docs("cake_bake", 3) == tmp_path / "h" / "organisms" / "cake_bake" / "llm_docs" / "seed3"
    assert h.user_specs == tmp_path / "h" / "organisms" / "specs"
    card = h.organism("a", "b", "c") / "card.json"
    card.parent.mkdir(parents=True)
    card.write_text("{}")
    assert h.organism_cards() == [card]
    assert Home(tmp_path / "other").root == tmp_path / "other"


def test_run_layout_paths_are_stable(tmp_path):
    lay = RunLayout(tmp_path)
    assert lay.collect_file("wiki", 15) == tmp_path / "collect" / "wiki" / "layer_15.safetensors"
    assert lay.patchscope("wiki", 15) == tmp_path / "lens" / "wiki" / "layer_15" / "patchscope.json"
    assert lay.steering_generations("wiki", 15) == tmp_path / "steer" / "wiki" / "layer_15" / "generations.jsonl"
    assert lay.stage_key("lens", "wiki", 15) == "lens-wiki-15"
    assert lay.collect_dir("/data/my file.jsonl").name.startswith("my_file-")
