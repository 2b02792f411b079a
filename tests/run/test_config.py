"""`difflens run` configs: the documented example is valid; bad fields, YAML and paths are named."""
from __future__ import annotations


import pytest

from conftest import write_run_config
from difflens.errors import ConfigError
from difflens.run.config import load_config


def test_example_config_is_valid():
    from pathlib import Path

    cfg = load_config(Path(__file__).parents[2] / "examples" / "run.yaml")
    assert cfg.finetuned == "organism:cake_bake" and cfg.steering.search_iters == 10


@pytest.mark.parametrize("fields, needle", [
    ({"out": "r", "finetuned": "x", "sampels": 5}, "sampels: unknown field"),
    ({"out": "r", "finetuned": "x", "positions": 0}, "positions: Input should be greater than or equal to 1"),
    ({"out": "r", "finetuned": "x", "grader": "gpt"}, "grader: Input should be 'offline' or 'llm'"),
    ({"out": "r", "finetuned": "x", "steering": {"search_iter": 3}}, "steering.search_iter: unknown field"),
    ({"out": "r"}, "finetuned: Field required"),
    ({"out": "r", "finetuned": "x", "stages": ["collect", "dance"]}, "stages.1"),
])
def test_invalid_config_names_the_bad_field(tmp_path, fields, needle):
    with pytest.raises(ConfigError) as e:
        load_config(write_run_config(tmp_path, **fields))
    assert needle in str(e.value)


def test_malformed_yaml_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("out: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
