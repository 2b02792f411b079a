"""Model sources: registered ``PREFIX:NAME`` resolvers and clear errors for unknown names."""
from __future__ import annotations

import pytest

from difflens.errors import ModelSourceError
from difflens.models.sources import ModelSource, register_resolver, resolve_source


def test_registered_prefix_resolves(monkeypatch, tmp_path):
    import difflens.models.sources as sources

    monkeypatch.setattr(sources, "_RESOLVERS", dict(sources._RESOLVERS))
    calls = []

    def resolve(name, base=None):
        calls.append((name, base))
        return ModelSource("local", f"mine:{name}", str(tmp_path))

    register_resolver("mine", resolve)
    src = resolve_source("mine:thing", base="b")
    assert src.spec == "mine:thing" and calls == [("thing", "b")]


def test_organism_prefix_is_registered_by_the_organisms_package():
    import difflens.models.sources as sources
    import difflens.organisms

    assert difflens.organisms and "organism" in sources._RESOLVERS


def test_unknown_names_are_refused():
    with pytest.raises(ModelSourceError, match="unknown model"):
        resolve_source("no-such-model")
    with pytest.raises(ModelSourceError, match="does not exist"):
        resolve_source("./no/such/dir")
