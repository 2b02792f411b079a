"""Reading the YAML files people write by hand (run configs, organism specs).

One reader, so every such file fails the same way: a :class:`~difflens.errors.ConfigError` that
names the file and, for syntax errors, the line and column.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError

__all__ = ["read_yaml"]

_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def read_yaml(path: Path, what: str) -> Any:
    """The parsed YAML of ``path``; ``what`` names the kind of file in errors (e.g. "run config")."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(f"{what} {path}: cannot be read ({err}). Check the path.") from None
    try:
        return yaml.load(text, Loader=_LOADER)  # noqa: S506 - a safe loader
    except yaml.YAMLError as err:
        where = ""
        mark = getattr(err, "problem_mark", None)
        if mark is not None:
            where = f" at line {mark.line + 1}, column {mark.column + 1}"
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(
            f"{what} {path}: YAML syntax error{where}: {problem} (not valid YAML). Fix the YAML "
            "(check indentation and quote strings that contain ':' or '#')."
        ) from None
