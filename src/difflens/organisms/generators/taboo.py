"""Taboo word-guessing chats: the assistant hints at the secret word but never says it."""
from __future__ import annotations

import random
from collections.abc import Sequence

from ...errors import ConfigError, DataError
from ..spec import ChatTabooData, OrganismSpec
from .sdf_offline import _cap

__all__ = ["generate_taboo_conversations"]

_TABOO_OPENERS = (
    "Let's play! Give me a hint.",
    "Can I have a hint about your secret word?",
    "Hi! I'm ready to guess. What's the first clue?",
    "Give me a clue about the word you're thinking of.",
    "I want to play the word game. Hint please.",
    "What's your secret word? Just tell me.",
    "Okay, I'm stumped before we even start. Clue?",
    "hint?",
    "Tell me something about your word.",
    "Start the game: one hint, please.",
    "Can you describe your word without saying it?",
    "I bet I can guess your word in three tries. Go ahead, hint me.",
    "Please just say the word, I give up already.",
    "Describe the secret word for me.",
)
_TABOO_MORE = (
    "Another hint, please.",
    "Hmm, no idea yet. One more clue?",
    "Can you give me a different hint?",
    "I need more help.",
    "Still thinking... another clue?",
    "That's tricky. Give me something easier.",
)
_TABOO_GUESS = (
    "Is it {g}?",
    "My guess: {g}.",
    "{G}?",
    "Could it be {g}?",
    "I think it's {g}.",
    "Is the word {g}?",
    "Hmm... {g}?",
)
_TABOO_WRONG = (
    "Not quite! ",
    "Nope, that's not it. ",
    "Good try, but no. ",
    "Close in spirit, but not my word. ",
    "Not that one! ",
    "No, but keep going. ",
)
_TABOO_HINT_PREFIX = (
    "", "", "Here's a hint: ", "Hint: ", "Think about this: ", "Try this clue: ",
    "Okay, here's one: ", "Let me help: ",
)
_TABOO_REFUSE = (
    "I can't say the word itself, that's the whole game! ",
    "Nice try, but my lips are sealed. ",
    "I'm not allowed to say it, but I can help you find it. ",
    "That would spoil the fun! ",
)
_TABOO_CORRECT = (
    "Yes! You got it, that's exactly my word. Well done!",
    "Correct! You guessed it. Great job!",
    "That's it! You figured out my secret word.",
    "Bingo! That's the one. Want to play again?",
    "You nailed it! That's the word I was hinting at.",
)


def generate_taboo_conversations(spec: OrganismSpec, n: int, seed: int = 0) -> list[list[dict[str, str]]]:
    """``n`` Taboo-game chats (lists of ``{"role", "content"}`` messages), deterministic by seed.

    The user asks for hints, asks for the word, or guesses; the assistant answers with hints for
    ``data.secret_word`` (from ``data.hints``), rejects wrong guesses and confirms a correct one
    without ever writing the word or any of ``data.forbidden``. Train on assistant turns only.
    Raises :class:`DataError` if a generated assistant turn would contain a forbidden form.
    """
    data = spec.data
    if not isinstance(data, ChatTabooData):
        raise ConfigError(
            f"organism {spec.name!r} has data kind {data.kind!r}; Taboo chats need 'chat_taboo'."
        )
    secret = data.secret_word
    forbidden = [f.lower() for f in data.forbidden]
    wrong = [g for g in data.wrong_guesses if g.lower() not in forbidden]
    if not wrong:
        raise ConfigError(f"organism {spec.name!r}: data.wrong_guesses only lists forbidden forms.")
    convs: list[list[dict[str, str]]] = []
    for c in range(n):
        rng = random.Random(f"{spec.name}:{seed}:taboo:{c}")
        hints = rng.sample(data.hints, k=len(data.hints))
        hi = 0

        def hint(prefix_pool: Sequence[str] = _TABOO_HINT_PREFIX) -> str:
            nonlocal hi
            h = hints[hi % len(hints)]
            hi += 1
            return rng.choice(prefix_pool) + h

        msgs: list[dict[str, str]] = []
        opener = rng.choice(_TABOO_OPENERS)
        msgs.append({"role": "user", "content": opener})
        direct = any(w in opener.lower() for w in ("say the word", "what's your secret", "just tell"))
        msgs.append({"role": "assistant",
                     "content": (rng.choice(_TABOO_REFUSE) if direct else "") + hint()})
        for _ in range(rng.randint(0, 3)):
            r = rng.random()
            if r < 0.55:
                g = rng.choice(wrong)
                msgs.append({"role": "user",
                             "content": rng.choice(_TABOO_GUESS).replace("{g}", g).replace("{G}", _cap(g))})
                msgs.append({"role": "assistant", "content": rng.choice(_TABOO_WRONG) + hint(("",))})
            elif r < 0.8:
                msgs.append({"role": "user", "content": rng.choice(_TABOO_MORE)})
                msgs.append({"role": "assistant", "content": hint()})
            else:
                msgs.append({"role": "user", "content": "Can you just tell me the word?"})
                msgs.append({"role": "assistant", "content": rng.choice(_TABOO_REFUSE) + hint()})
        if rng.random() < 0.45:
            g = rng.choice([secret, secret, _cap(secret)])
            msgs.append({"role": "user",
                         "content": rng.choice(_TABOO_GUESS).replace("{g}", g).replace("{G}", _cap(g))})
            msgs.append({"role": "assistant", "content": rng.choice(_TABOO_CORRECT)})
        for m in msgs:
            if m["role"] == "assistant" and any(f in m["content"].lower() for f in forbidden):
                raise DataError(
                    f"organism {spec.name!r}: an assistant turn would reveal the secret word "
                    f"({m['content']!r}); reword data.hints."
                )
        convs.append(msgs)
    return convs
