"""An SQLite store of example contexts that a viewer pages through without loading everything.

One row per sample: its token ids and decoded tokens (the full row fed to the models and where
the read window starts), per-token values of each statistic over the window, and per statistic
the sample's mean, max and the position of the max (as the writing method computed them). :meth:`ExamplesStore.top` pages the samples
ranked by one per-sample statistic (``kl_max``, ``norm_mean``, ...), using an index, with the
position of the statistic's maximum marked. The store records the fingerprint of the run that
wrote it; opening it with another fingerprint is refused (a store copied from another run must
not be read as this one's). Only the Python standard library's ``sqlite3`` is used.
"""
from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any, Sequence

from pydantic import BaseModel

from ..errors import RunDirError

__all__ = ["ExamplesStore", "Example", "ExampleRow"]

SCHEMA_VERSION = 1


class ExampleRow(BaseModel):
    """What a method writes for one sample."""

    sample: int
    ids: list[int]  # the full row (context + window)
    tokens: list[str]  # one decoded string per id of ``ids``
    start: int  # the window starts at ids[start]
    values: dict[str, list[float]]  # statistic -> per-position values over the window (T)
    means: dict[str, float]  # statistic -> the sample's mean (over the positions the method ranks)
    maxes: dict[str, float]  # statistic -> the sample's maximum
    argmax: dict[str, int]  # statistic -> the window position of the maximum


class Example(BaseModel):
    """One ranked context: a sample, the statistic it is ranked by, and the marked position."""

    rank: int
    sample: int
    stat: str  # e.g. "kl_max"
    value: float
    position: int  # in the window (0..T-1): where the statistic's per-token value is largest
    ids: list[int]
    tokens: list[str]
    start: int
    values: dict[str, list[float]]

    @property
    def index(self) -> int:
        """The marked token's index in ``ids`` / ``tokens``."""
        return self.start + self.position

    @property
    def text(self) -> str:
        return "".join(self.tokens)

    def marked(self, left: str = "[[", right: str = "]]", context: int | None = None) -> str:
        """The text with the marked token between ``left`` and ``right``; with ``context``, only that
        many characters either side of it (``…`` where cut)."""
        i = self.index
        before, after = "".join(self.tokens[:i]), "".join(self.tokens[i + 1:])
        if context is not None:
            before = ("…" + before[-context:]) if len(before) > context else before
            after = (after[:context] + "…") if len(after) > context else after
        return before + left + self.tokens[i] + right + after


class ExamplesStore:
    """Per-sample statistics and contexts in one SQLite file (see the module docstring)."""

    def __init__(self, path: Path, conn: sqlite3.Connection, stats: list[str], fingerprint: str):
        self.path = path
        self._conn = conn
        self.stats = stats  # base statistics, e.g. ["kl", "norm", "cos"]
        self.fingerprint = fingerprint

    # -- opening ---------------------------------------------------------------------------------
    @classmethod
    def create(cls, path: Path, *, fingerprint: str, stats: Sequence[str], meta: dict[str, Any] | None = None
               ) -> "ExamplesStore":
        """A new, empty store at ``path`` (an existing file is replaced)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        for p in (path, path.with_name(path.name + "-journal")):
            p.unlink(missing_ok=True)
        conn = sqlite3.connect(str(path))
        cols = ", ".join(f"{s}_mean REAL, {s}_max REAL, {s}_argmax INTEGER" for s in stats)
        conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT)")
        conn.execute(f"CREATE TABLE samples (sample INTEGER PRIMARY KEY, ids TEXT, tokens TEXT, start INTEGER, "
                     f"vals TEXT, {cols})")
        for s in stats:
            for agg in ("mean", "max"):
                conn.execute(f"CREATE INDEX idx_{s}_{agg} ON samples ({s}_{agg} DESC, sample)")
        info = {"fingerprint": fingerprint, "stats": json.dumps(list(stats)), "schema": str(SCHEMA_VERSION),
                **{k: json.dumps(v) for k, v in (meta or {}).items()}}
        conn.executemany("INSERT INTO meta VALUES (?, ?)", list(info.items()))
        conn.commit()
        return cls(path, conn, list(stats), fingerprint)

    @classmethod
    def resume(cls, path: Path, *, fingerprint: str, stats: Sequence[str], meta: dict[str, Any] | None = None
               ) -> "ExamplesStore":
        """The store at ``path`` for writing more rows, if it belongs to ``fingerprint``; else a new one."""
        path = Path(path)
        if path.exists():
            try:
                store = cls.open(path, fingerprint=fingerprint, writable=True)
                if store.stats == list(stats):
                    return store
                store.close()
            except RunDirError:
                pass
        return cls.create(path, fingerprint=fingerprint, stats=stats, meta=meta)

    @classmethod
    def open(cls, path: Path, *, fingerprint: str | None, writable: bool = False) -> "ExamplesStore":
        """Open an existing store; with ``fingerprint``, one written by another run is refused."""
        path = Path(path)
        if not path.exists():
            raise RunDirError(f"{path} does not exist; run `difflens diff` with the kl method first.")
        uri = f"file:{path}" + ("" if writable else "?mode=ro")
        try:
            conn = sqlite3.connect(uri, uri=True)
            meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
        except sqlite3.DatabaseError as e:
            raise RunDirError(f"{path} is not a difflens examples store ({e}); delete it and rerun "
                              "`difflens diff`.") from e
        got = meta.get("fingerprint", "")
        if fingerprint is not None and got != fingerprint:
            conn.close()
            raise RunDirError(f"{path} holds examples of another run (fingerprint {got or 'none'}, this run's is "
                              f"{fingerprint}); delete it and rerun `difflens diff`, or open it from its own run.")
        return cls(path, conn, json.loads(meta.get("stats", "[]")), got)

    def meta(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in self._conn.execute("SELECT key, value FROM meta").fetchall():
            try:
                out[k] = json.loads(v) if k not in ("fingerprint",) else v
            except json.JSONDecodeError:
                out[k] = v
        return out

    # -- writing ---------------------------------------------------------------------------------
    def add(self, rows: Sequence[ExampleRow]) -> None:
        """Insert (or replace: a resumed pass rewrites the same rows) one row per sample."""
        out = []
        for r in rows:
            aggs: list[Any] = []
            for s in self.stats:
                aggs += [r.means[s], r.maxes[s], r.argmax[s]]
            out.append((r.sample, json.dumps(r.ids), json.dumps(r.tokens, ensure_ascii=False), r.start,
                        json.dumps(r.values), *aggs))
        marks = ", ".join("?" for _ in range(5 + 3 * len(self.stats)))
        self._conn.executemany(f"INSERT OR REPLACE INTO samples VALUES ({marks})", out)

    def commit(self) -> None:
        self._conn.commit()

    def close(self) -> None:
        """Close; rows added since the last :meth:`commit` are discarded."""
        self._conn.close()

    # -- reading ---------------------------------------------------------------------------------
    def ranked_stats(self) -> list[str]:
        """The statistics :meth:`top` ranks by, e.g. ``kl_max``."""
        return [f"{s}_{agg}" for s in self.stats for agg in ("max", "mean")]

    def count(self) -> int:
        return int(self._conn.execute("SELECT COUNT(*) FROM samples").fetchone()[0])

    def top(self, stat: str, offset: int = 0, limit: int = 20) -> list[Example]:
        """Samples ranked by ``stat`` (descending; ties by sample index), ``limit`` from ``offset``."""
        if stat not in self.ranked_stats():
            raise RunDirError(f"unknown statistic '{stat}'; this store ranks by {', '.join(self.ranked_stats())}.")
        if offset < 0 or limit < 0:
            raise ValueError("offset and limit must be ≥ 0")
        base = stat.rsplit("_", 1)[0]
        cur = self._conn.execute(
            f"SELECT sample, {stat}, {base}_argmax, ids, tokens, start, vals FROM samples "
            f"ORDER BY {stat} DESC, sample LIMIT ? OFFSET ?", (limit, offset))
        return [Example(rank=offset + i, sample=s, stat=stat, value=v, position=p, ids=json.loads(ids),
                        tokens=json.loads(toks), start=start, values=json.loads(vals))
                for i, (s, v, p, ids, toks, start, vals) in enumerate(cur.fetchall())]

    def __enter__(self) -> "ExamplesStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
