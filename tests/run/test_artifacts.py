"""Typed artifacts: round trip and clear errors on corruption."""
from __future__ import annotations

import pytest

from difflens.rundir import artifacts as A
from difflens.adl.logit_lens import logit_lens


def test_artifacts_roundtrip_and_corruption(tmp_path, tiny_run):
    pair, _, c = tiny_run
    res = logit_lens(pair, c, [0], k=3)
    p = tmp_path / "ll.json"
    A.save(res, p)
    assert A.load(A.LogitLensResult, p) == res
    p.write_text("{broken")
    from difflens.errors import RunDirError

    with pytest.raises(RunDirError, match="corrupt"):
        A.load(A.LogitLensResult, p)
