"""Forward interventions: each edit changes exactly what it claims, on real layer outputs."""
from __future__ import annotations

import torch

from conftest import tiny_model
from difflens.adl.interventions import add, project_out, replace_component, replace_rows
from difflens.models.arch import ArchAdapter


def test_add_respects_the_prompt_mask_and_not_decode_steps():
    h = torch.zeros(2, 3, 4)
    v = torch.arange(4.0)
    mask = torch.tensor([[0, 1, 1], [1, 1, 1]])
    out = add(v, mask)(h)
    assert torch.equal(out[0, 0], torch.zeros(4)) and torch.equal(out[0, 1], v) and torch.equal(out[1, 0], v)
    step = add(v, mask)(torch.zeros(2, 1, 4))  # a decode step: every token is real
    assert torch.equal(step[:, 0], v.expand(2, 4))


def test_replace_rows_overwrites_one_position_per_row():
    h = torch.randn(3, 5, 4)
    vals = torch.randn(3, 4)
    out = replace_rows(torch.tensor([4, 0, 2]), vals)(h)
    assert torch.equal(out[0, 4], vals[0]) and torch.equal(out[1, 0], vals[1]) and torch.equal(out[2, 2], vals[2])
    keep = torch.ones(3, 5, dtype=torch.bool)
    keep[0, 4] = keep[1, 0] = keep[2, 2] = False
    assert torch.equal(out[keep], h[keep]) and not torch.equal(out, h)


def test_project_out_removes_the_span_only():
    q, _ = torch.linalg.qr(torch.randn(8, 2))
    h = torch.randn(4, 6, 8)
    out = project_out(q)(h)
    assert (out @ q).abs().max() < 1e-5
    orth = h - (h @ q) @ q.T
    assert torch.allclose(out, orth, atol=1e-6)


def test_replace_component_swaps_in_the_reference_component():
    torch.manual_seed(0)
    u = torch.randn(8)
    h, r = torch.randn(2, 5, 8), torch.randn(2, 5, 8)
    out = replace_component(3.0 * u, r)(h)  # the direction's scale does not matter
    un = u / u.norm()
    assert torch.allclose(out @ un, r @ un, atol=1e-5)  # component along u is the reference's
    perp = lambda x: x - (x @ un)[..., None] * un  # noqa: E731
    assert torch.allclose(perp(out), perp(h), atol=1e-5)  # everything else is untouched
    assert torch.allclose(replace_component(u, h)(h), h, atol=1e-6)  # own activations: a no-op


def test_edits_apply_inside_a_real_forward():
    model = tiny_model("llama")
    arch = ArchAdapter(model)
    ids = torch.tensor([[5, 6, 7, 8]])
    seen = {}

    def read(h):
        seen["h"] = h.detach().clone()
        return h

    v = torch.full((arch.hidden_size,), 0.5)
    with torch.no_grad():
        with arch.edit_layer(1, read):
            model(input_ids=ids)
        plain = seen["h"]
        with arch.edit_layer(1, add(v)), arch.edit_layer(1, read):
            model(input_ids=ids)
    assert torch.allclose(seen["h"], plain + v, atol=1e-6)
