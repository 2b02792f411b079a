"""An out-of-range number on a command is one ``error:`` line naming the option, before any compute."""
from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.parametrize("argv, needle", [
    (["collect", "--base", "smollm2-135m-instruct", "--finetuned", "smollm2-135m-instruct", "--samples", "-5",
      "--out", "{tmp}/run"], "--samples: input should be greater than or equal to 1 (got -5)."),
    (["steer", "{tmp}/run", "--samples", "0"], "--samples: input should be greater than or equal to 1 (got 0)."),
])
def test_out_of_range_numbers_are_one_line_errors(tmp_path, argv, needle, no_model_loads, capsys):
    from difflens.cli import app

    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    with pytest.raises(SystemExit) as ex:
        app(argv)
    assert ex.value.code == 2
    out = capsys.readouterr()
    text = " ".join((out.out + out.err).split())
    assert needle in text and "Traceback" not in text


def test_the_console_script_prints_no_traceback(tmp_path):
    out = subprocess.run([sys.executable, "-c", "from difflens.cli import app; app()", "collect", "--base",
                          "smollm2-135m-instruct", "--finetuned", "smollm2-135m-instruct", "--samples", "-5",
                          "--out", str(tmp_path / "run")], capture_output=True, text=True, timeout=120)
    text = out.stdout + out.stderr
    assert out.returncode == 2
    assert "--samples: input should be greater than or equal to 1 (got -5)." in text
    assert "Traceback" not in text and "pydantic" not in text
    assert not (tmp_path / "run").exists()  # nothing written before the check
