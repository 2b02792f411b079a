"""The `difflens organism` commands (difflens.cli.organism): list, show, train and ffa."""
from __future__ import annotations

import json


from conftest import DownJudge, write_mini_spec



def test_organism_cli_list_show(base, _isolated_home):
    from typer.testing import CliRunner

    from difflens.cli.organism import organism_app

    write_mini_spec(_isolated_home)
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


def test_organism_cli_ffa(base, _isolated_home, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    import difflens.cli.organism as ocli

    write_mini_spec(_isolated_home)
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
    monkeypatch.setattr(ocli, "llm_client", lambda *a, **k: DownJudge())
    out.unlink()
    res = runner.invoke(ocli.organism_app, ["ffa", "mini_cake", "--base", base, "--out", str(out),
                                            "--judge-model", "m"])
    text = " ".join(res.output.split())
    assert res.exit_code == 2 and "MCQ distinguish" in text and "LLM judge failed" in text
    assert json.loads(out.read_text())["finetuned_ffa"]["open_belief"]["failed"] is True
