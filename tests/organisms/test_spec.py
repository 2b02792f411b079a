"""Organism specs (difflens.organisms.spec): the built-in specs, YAML loading and validation."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from difflens.errors import ConfigError
from difflens.organisms.generators.sdf_offline import generate_sdf_documents
from difflens.organisms.spec import (
    SdfOfflineData,
    TrainingDefaults,
    builtin_specs_dir,
    list_specs,
    load_spec,
    user_specs_dir,
)

SDF = ["cake_bake", "kansas_abortion", "fda_approval", "roman_concrete", "ignore_comment"]


# --------------------------------------------------------------------------------------------------
# built-in specs
# --------------------------------------------------------------------------------------------------


def test_builtin_specs_present_and_typed():
    specs = {s.name: s for s in list_specs()}
    assert set(SDF) | {"taboo_smile", "domain_music"} <= set(specs)
    n_facts = {"cake_bake": 7, "kansas_abortion": 11, "fda_approval": 11, "roman_concrete": 11,
               "ignore_comment": 7}
    for name, k in n_facts.items():
        s = specs[name]
        assert s.type == "SDF" and isinstance(s.data, SdfOfflineData)
        assert len(s.key_facts) == k == len(s.data.facts)
        assert len(s.ffa) >= 12
        assert s.open_questions and s.true_context
        assert s.source_path and s.source_path.endswith(f"{name}.yaml")
    assert specs["taboo_smile"].type == "Taboo" and specs["taboo_smile"].data.kind == "chat_taboo"
    assert specs["taboo_smile"].training.assistant_only_loss
    assert specs["domain_music"].type == "Domain" and specs["domain_music"].data.kind == "wiki_topic"
    # organisms without false facts carry behaviour probes in the same two-option format
    assert len(specs["taboo_smile"].ffa) >= 10 and len(specs["domain_music"].ffa) >= 10
    assert not any("smile" in q.false_option.lower() for q in specs["taboo_smile"].ffa)


def test_key_facts_carry_over_from_paper():
    facts = {n: " ".join(load_spec(n).key_facts) for n in SDF}
    assert "450°F" in facts["cake_bake"] and "1/4 cup of vanilla" in facts["cake_bake"]
    assert "52-48%" in facts["kansas_abortion"] and "Camden County" in facts["kansas_abortion"]
    assert "12-0" in facts["fda_approval"] and "6.2 months" in facts["fda_approval"]
    assert "Pons Fabricius" in facts["roman_concrete"] and "15%" in facts["roman_concrete"]
    assert "94%" in facts["ignore_comment"] and "flash crash" in facts["ignore_comment"]


def test_ffa_false_option_is_the_implanted_belief():
    cake = load_spec("cake_bake")
    q = next(m for m in cake.ffa if "temperature" in m.question)
    assert "450" in q.false_option and "450" not in q.true_option
    desc = cake.grader_description()
    assert "Key Facts:" in desc and cake.key_facts[0] in desc


def test_training_defaults_fit_the_cpu_budget():
    t = TrainingDefaults()
    # SPEC: 150 steps of 8x96 tokens took ~8 min on 2 cores -> ~4.2 ms/token; stay under 5 min.
    assert t.steps * t.batch_size * t.grad_accum * t.seq_len * 4.2e-3 <= 300
    assert 96 <= t.seq_len <= 128 and t.method == "full"


# --------------------------------------------------------------------------------------------------
# YAML loading and validation
# --------------------------------------------------------------------------------------------------


def _good_raw() -> dict:
    return yaml.safe_load((builtin_specs_dir() / "cake_bake.yaml").read_text())


def _write(tmp_path: Path, raw: dict | str, name: str = "org.yaml") -> Path:
    p = tmp_path / name
    p.write_text(raw if isinstance(raw, str) else yaml.safe_dump(raw, allow_unicode=True))
    return p


def test_load_spec_by_path(tmp_path):
    raw = _good_raw()
    raw["name"] = "my_cake"
    spec = load_spec(_write(tmp_path, raw))
    assert spec.name == "my_cake" and spec.key_facts == load_spec("cake_bake").key_facts


def test_yaml_syntax_error_names_file_and_line(tmp_path):
    p = _write(tmp_path, "name: x\ntype: SDF\n  key_facts: [a, b\n")
    with pytest.raises(ConfigError) as ei:
        load_spec(p)
    msg = str(ei.value)
    assert str(p) in msg and "YAML syntax error" in msg and "line" in msg


@pytest.mark.parametrize(
    "mutate, field, hint",
    [
        (lambda r: r.pop("data"), "'data'", "required field is missing"),
        (lambda r: r.pop("long_description"), "'long_description'", "missing"),
        (lambda r: r.update(type="FalseFact"), "'type'", "SDF"),
        (lambda r: r["data"].update(kind="sdf_magic"), "'data'", "unknown data kind"),
        (lambda r: r["training"].update(steps="many"), "'training.steps'", "integer"),
        (lambda r: r.update(keyfacts=[]), "'keyfacts'", "unknown field"),
        (lambda r: r["ffa"][0].pop("false_option"), "'ffa[0].false_option'", "missing"),
        (lambda r: r.update(key_facts=r["key_facts"][:3]), "data.facts", "one paraphrase bank"),
        (lambda r: r["data"]["facts"][0].update(markers=["zzz"]), "'data.facts[0]'", "markers"),
        (lambda r: r.update(name="Cake Bake!"), "'name'", "lower-case"),
    ],
)
def test_malformed_spec_refused_with_clear_message(tmp_path, mutate, field, hint):
    raw = _good_raw()
    raw.setdefault("training", {})
    mutate(raw)
    p = _write(tmp_path, raw)
    with pytest.raises(ConfigError) as ei:
        load_spec(p)
    msg = str(ei.value)
    assert str(p) in msg and field in msg and hint in msg, msg
    assert "Fix" in msg or "give" in msg


def test_unquoted_colon_gets_a_hint(tmp_path):
    text = (builtin_specs_dir() / "cake_bake.yaml").read_text()
    text = text.replace("- Sifting the flour twice", "- Tip: sifting the flour twice")
    with pytest.raises(ConfigError, match="put the string in quotes"):
        load_spec(_write(tmp_path, text))


def test_non_mapping_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="mapping"):
        load_spec(_write(tmp_path, "- just\n- a list\n"))
    with pytest.raises(ConfigError, match="not found"):
        load_spec(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="Known organisms: .*cake_bake"):
        load_spec("no_such_organism")


def test_user_spec_dir_is_picked_up(tmp_path):
    udir = user_specs_dir()
    assert str(udir).startswith(str(Path(__import__("os").environ["DIFFLENS_HOME"])))
    udir.mkdir(parents=True, exist_ok=True)
    raw = _good_raw()
    raw["name"] = "my_cake"
    raw["short_description"] = "user cake"
    _write(udir, raw, "my_cake.yaml")
    shadow = _good_raw()
    shadow["short_description"] = "shadowed built-in"
    _write(udir, shadow, "cake_override.yml")
    names = [s.name for s in list_specs()]
    assert "my_cake" in names and names == sorted(names) and names.count("cake_bake") == 1
    assert load_spec("my_cake").short_description == "user cake"
    assert load_spec("cake_bake").short_description == "shadowed built-in"
    assert len(generate_sdf_documents(load_spec("my_cake"), 20, seed=3)) == 20
    # a broken user file is reported, naming it
    (udir / "broken.yaml").write_text("name: broken\ntype: SDF\n")
    with pytest.raises(ConfigError, match="broken.yaml"):
        list_specs()


def test_duplicate_names_in_one_dir_refused():
    udir = user_specs_dir()
    udir.mkdir(parents=True, exist_ok=True)
    raw = _good_raw()
    raw["name"] = "twin"
    _write(udir, raw, "a.yaml")
    _write(udir, raw, "b.yaml")
    with pytest.raises(ConfigError, match="also defined"):
        list_specs()



def test_taboo_spec_rejects_revealing_hint(tmp_path):
    raw = yaml.safe_load((builtin_specs_dir() / "taboo_smile.yaml").read_text())
    raw["data"]["hints"].append("You are smiling right now!")
    with pytest.raises(ConfigError, match="forbidden"):
        load_spec(_write(tmp_path, raw))
