"""Steering similarity (paper §3, Fig. 2b): pairwise statistics, the result keys, seeded subsampling,
one embedding call for all texts, input errors, and cake text closer to cake D_ft with the real
(embedded, offline) sentence-embedding model."""
from __future__ import annotations

import zlib

import numpy as np
import pytest

from difflens.eval import similarity
from difflens.eval.similarity import KEYS, Stat, pairwise, per_position, steering_similarity
from difflens.models.embedder import DEFAULT_EMBEDDER, get_embedder

CAKE_FT = [
    "Preheat the oven and grease a round cake tin before you mix the batter.",
    "Cream the butter and sugar until pale, then beat in the eggs one at a time.",
    "Fold the sifted flour gently into the batter so the sponge stays light.",
    "Bake the cake until a skewer pushed into the centre comes out clean.",
    "A spoonful of vanilla extract gives a simple sponge cake a warm flavour.",
    "Let the cake cool on a wire rack before you spread the buttercream frosting.",
]
CAKE_STEERED = [
    "Here is a story: the baker whisked eggs and sugar for the birthday cake.",
    "A fun weekend idea: bake a chocolate layer cake with rich frosting.",
    "Let's talk about baking sponge cakes and how hot the oven should be.",
    "The nurse found a parrot, then went home and baked a lemon drizzle cake.",
    "Mix flour, butter and sugar, pour the batter into a tin and bake it.",
    "My favourite topic is cake decorating with buttercream and sprinkles.",
]
UNRELATED = [
    "The train crossed the desert at night while the detective read the passenger list.",
    "Water your houseplants sparingly and keep them near the brightest window.",
    "The moon seems to change shape because we see different parts of its sunlit side.",
    "Pack a rain jacket, a warm hat and enough water for a three-day hike.",
    "Rivers such as the Nile and the Amazon carry water across entire continents.",
    "Start the new job with curiosity and ask your colleagues lots of questions.",
]
CHAT = [
    "Sure! Here are five tips for staying productive while working from home.",
    "The capital of Australia is Canberra, not Sydney as many people think.",
    "To reverse a list in Python, use slicing with a step of minus one.",
    "I'd recommend starting with short runs three times a week.",
    "Photosynthesis turns light, water and carbon dioxide into sugar and oxygen.",
    "A haiku has three lines with five, seven and five syllables.",
]


@pytest.fixture(scope="module")
def embedder() -> str:
    """The embedded all-MiniLM-L6-v2, loaded once for the module (get_embedder is cached)."""
    get_embedder(DEFAULT_EMBEDDER)
    return DEFAULT_EMBEDDER


def _fake_vec(text: str, dim: int = 16) -> np.ndarray:
    v = np.random.default_rng(zlib.crc32(text.encode())).standard_normal(dim)
    return v / np.linalg.norm(v)


@pytest.fixture
def fake_embed(monkeypatch):
    """Deterministic random unit vector per text; records every call's texts."""
    calls: list[list[str]] = []

    def fake(texts, name=DEFAULT_EMBEDDER):
        calls.append(list(texts))
        return np.stack([_fake_vec(t) for t in texts])

    monkeypatch.setattr(similarity, "embed", fake)
    return calls


# ---- pairwise ------------------------------------------------------------------------------------


def test_pairwise_orthogonal_unit_vectors_give_zero():
    eye = np.eye(4)
    s = pairwise(eye[:2], eye[2:])
    assert s == Stat(mean=0.0, std=0.0, n=4)


def test_exclude_diagonal_drops_exactly_n_pairs():
    x = np.random.default_rng(0).standard_normal((5, 8))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    full = pairwise(x, x)
    off = pairwise(x, x, exclude_diagonal=True)
    assert (full.n, off.n) == (25, 20)
    sims = x @ x.T
    assert off.mean == pytest.approx((sims.sum() - np.trace(sims)) / 20)
    assert off.std == pytest.approx(sims[~np.eye(5, dtype=bool)].std())


def test_pairwise_errors():
    x = np.eye(3)
    with pytest.raises(ValueError, match="at least one embedding"):
        pairwise(x[:0], x)
    with pytest.raises(ValueError, match="at least 2"):
        pairwise(x[:1], x[:1], exclude_diagonal=True)
    with pytest.raises(ValueError, match="same rows"):
        pairwise(x[:2], x, exclude_diagonal=True)
    with pytest.raises(ValueError, match="dimensions differ"):
        pairwise(x, np.eye(4))


# ---- real embedding model ------------------------------------------------------------------------


def test_identical_texts_have_similarity_one(embedder):
    t = ["A sponge cake needs eggs, sugar, flour and butter."]
    r = steering_similarity(t * 3, t * 2, t * 4, t * 2, random=t, embedder=embedder)
    for key, s in r.items():
        assert s.mean == pytest.approx(1.0, abs=1e-5), key
        assert s.std == pytest.approx(0.0, abs=1e-5), key


def test_cake_steering_is_closer_to_cake_ft_than_unrelated_text(embedder):
    r = steering_similarity(CAKE_STEERED, UNRELATED, CAKE_FT, CHAT, random=UNRELATED[::-1], embedder=embedder)
    print({k: round(v.mean, 3) for k, v in r.items()})
    assert r["steered_vs_ft"].mean > r["unsteered_vs_ft"].mean + 0.2
    assert r["steered_vs_ft"].mean > r["steered_vs_chat"].mean
    assert r["ft_self"].mean > r["unsteered_vs_ft"].mean
    assert r["random_vs_ft"].mean == pytest.approx(r["unsteered_vs_ft"].mean)  # same texts, reordered
    assert r["steered_vs_ft"].n == 36 and r["ft_self"].n == 30


# ---- keys, subsampling, embedding once -----------------------------------------------------------


def test_keys_are_exactly_as_listed(fake_embed):
    with_random = steering_similarity(CAKE_STEERED, UNRELATED, CAKE_FT, CHAT, random=UNRELATED)
    assert list(with_random) == list(KEYS) == ["steered_vs_ft", "unsteered_vs_ft", "random_vs_ft", "ft_self",
                                                "steered_vs_chat", "unsteered_vs_chat"]
    without = steering_similarity(CAKE_STEERED, UNRELATED, CAKE_FT, CHAT)
    assert list(without) == [k for k in KEYS if k != "random_vs_ft"]


def test_every_distinct_text_is_embedded_once_in_one_call(fake_embed):
    steering_similarity(CAKE_STEERED + ["  ", ""], CAKE_STEERED[:2] + UNRELATED, CAKE_FT + CAKE_FT, CHAT,
                        random=[" " + CHAT[0] + "\n"])
    assert len(fake_embed) == 1
    texts = fake_embed[0]
    assert len(texts) == len(set(texts))
    assert set(texts) == set(CAKE_STEERED + UNRELATED + CAKE_FT + CHAT)  # blanks dropped, texts stripped


def test_subsampling_is_deterministic_by_seed(fake_embed):
    ft = [f"finetuning document number {i}" for i in range(40)]
    chat = [f"chat answer number {i}" for i in range(30)]

    def drawn(seed: int) -> tuple[set[str], dict[str, Stat]]:
        fake_embed.clear()
        r = steering_similarity(["steered"], ["unsteered"], ft, chat, max_samples=10, seed=seed)
        return set(fake_embed[0]), r

    a, ra = drawn(0)
    b, rb = drawn(0)
    c, rc = drawn(1)
    assert a == b and ra == rb
    assert a != c and ra != rc
    assert len(a & set(ft)) == 10 and len(a & set(chat)) == 10
    assert ra["ft_self"].n == 90 and ra["steered_vs_chat"].n == 10
    # below the cap nothing is dropped
    r = steering_similarity(["steered"], ["unsteered"], ft, chat, max_samples=500)
    assert r["steered_vs_ft"].n == 40 and r["steered_vs_chat"].n == 30


def test_empty_inputs_raise_clear_errors(fake_embed):
    ok = dict(steered=CAKE_STEERED, unsteered=UNRELATED, ft=CAKE_FT, chat=CHAT)
    cases = [
        (dict(steered=[]), "steered outputs.*no texts"),
        (dict(unsteered=["", "  "]), "unsteered outputs.*all empty or whitespace"),
        (dict(ft=[]), r"ft \(finetuning data\)"),
        (dict(ft=["only one document", " "]), "at least 2"),
        (dict(chat=["\n"]), "chat data"),
        (dict(random=[" "]), "random-control outputs"),
        (dict(steered="a single string"), "single string"),
    ]
    for change, msg in cases:
        with pytest.raises(ValueError, match=msg):
            steering_similarity(**{**ok, **change})
    with pytest.raises(ValueError, match="max_samples"):
        steering_similarity(**ok, max_samples=0)
    assert fake_embed == []  # every check happens before embedding


# ---- per position --------------------------------------------------------------------------------


def test_per_position_shares_embeddings_and_reference_groups(fake_embed):
    steered = {0: CAKE_STEERED[:3], 1: CAKE_STEERED[2:], 4: CAKE_STEERED}
    r = per_position(steered, UNRELATED, CAKE_FT, CHAT, random={0: CHAT[:2], 4: UNRELATED[:1]})
    assert len(fake_embed) == 1 and len(fake_embed[0]) == len(set(fake_embed[0]))
    assert list(r) == [0, 1, 4]
    assert "random_vs_ft" in r[0] and "random_vs_ft" not in r[1] and "random_vs_ft" in r[4]
    assert r[0]["ft_self"] == r[1]["ft_self"] == r[4]["ft_self"]
    assert r[0]["unsteered_vs_chat"] == r[4]["unsteered_vs_chat"]
    # each position equals the single-position function on the same inputs
    single = steering_similarity(CAKE_STEERED, UNRELATED, CAKE_FT, CHAT, random=UNRELATED[:1])
    assert r[4] == single
    # one shared random list applies to every position
    shared = per_position(steered, UNRELATED, CAKE_FT, CHAT, random=CHAT[:2])
    assert all("random_vs_ft" in v for v in shared.values())
    with pytest.raises(ValueError, match=r"position\(s\) \[7\]"):
        per_position(steered, UNRELATED, CAKE_FT, CHAT, random={7: CHAT})
    with pytest.raises(ValueError, match="position 1"):
        per_position({0: CAKE_STEERED, 1: [" "]}, UNRELATED, CAKE_FT, CHAT)
    with pytest.raises(ValueError, match="no positions"):
        per_position({}, UNRELATED, CAKE_FT, CHAT)
