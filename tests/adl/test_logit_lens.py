"""Logit lens: equals a manual final-norm + unembedding computation."""
from __future__ import annotations

import pytest

from difflens.adl.logit_lens import logit_lens


def test_logit_lens_matches_manual(tiny_run):
    pair, _, c = tiny_run
    res = logit_lens(pair, c, [0, 3], k=5)
    e = res.get("delta", 3)
    manual = pair.ft_arch.unembed(c.delta[3]).softmax(-1)
    assert e.top_positive[0].token_id == int(manual.argmax())
    assert e.top_positive[0].prob == pytest.approx(float(manual.max()), rel=1e-5)
    neg = pair.ft_arch.unembed(-c.delta[3]).softmax(-1)
    assert e.top_negative[0].token_id == int(neg.argmax())
    assert len(res.entries) == 4 * 2  # δ̄, h̄_base, h̄_ft and the random control, at 2 positions
    r = res.get("random", 3)
    manual_r = pair.ft_arch.unembed(c.vectors("random")[3]).softmax(-1)
    assert r.top_positive[0].token_id == int(manual_r.argmax())
