"""Files difflens reads and writes: the one place for atomic writes and JSON / JSONL / YAML reads.

Every write goes to a temporary file in the target's directory and is renamed over the target,
so an interrupted process never leaves a half-written artifact. Hand-written YAML files (run
configs, organism specs) fail the same way everywhere: a :class:`~difflens.errors.ConfigError`
that names the file and, for syntax errors, the line and column.
"""
from __future__ import annotations

import importlib.util
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError, RunDirError

__all__ = ["installed_package_dir", "atomic_write_text", "write_json", "read_json", "jsonl_lines", "read_jsonl",
           "read_yaml"]


def installed_package_dir(pkg: str) -> Path | None:
    """Directory of an installed package, found without importing it (None if not installed)."""
    spec = importlib.util.find_spec(pkg)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (temporary file in the same directory, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, obj: Any, *, indent: int = 2, ensure_ascii: bool = True) -> None:
    """``obj`` as JSON at ``path``, written atomically."""
    atomic_write_text(path, json.dumps(obj, indent=indent, sort_keys=False, default=str,
                                       ensure_ascii=ensure_ascii) + "\n")


def read_json(path: Path) -> Any:
    """The JSON at ``path``; a missing or corrupt file raises :class:`RunDirError` saying what to do."""
    if not path.exists():
        raise RunDirError(f"{path} does not exist; run the stage that produces it first.")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise RunDirError(f"{path} is corrupt ({e}); delete it and rerun the stage.") from e


def jsonl_lines(text: str) -> list[str]:
    """The lines of a JSONL text: split at ``\n`` only (a ``\r`` before it dropped).

    ``str.splitlines`` also splits at characters that JSON writers leave unescaped inside strings
    (U+2028, U+2029, U+0085, \x1c–\x1e): a generated text holding one would be cut in two.
    """
    return [line[:-1] if line.endswith("\r") else line for line in text.split("\n")]


def read_jsonl(path: Path) -> list[Any]:
    """Records of a JSONL file that is appended to as work progresses.

    Blank lines are skipped and an unparseable line (a write cut off by an interruption) is
    ignored, so a resumed process sees every record that was completely written.
    """
    out: list[Any] = []
    if not path.exists():
        return out
    for line in jsonl_lines(path.read_text(encoding="utf-8")):
        line = line.strip()
        if not line:
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


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
