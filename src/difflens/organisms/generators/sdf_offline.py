"""Offline synthetic documents (SDF, paper §3.2 / App. C.5) from a per-organism phrase bank.

:func:`generate_sdf_documents` fills the genres of :mod:`.genres` from ``data.facts`` of a
``sdf_offline`` spec: varied genres, openings, connectives and paraphrases, each document
asserting >= 2 key facts. Deterministic by seed.
"""
from __future__ import annotations

import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ...errors import ConfigError, DataError
from ..spec import OrganismSpec, SdfOfflineData
from .genres import DEFAULT_GENRES, GENRES, Genre

__all__ = [
    "SdfDocument",
    "Genre",
    "GENRES",
    "DEFAULT_GENRES",
    "generate_sdf_corpus",
    "generate_sdf_documents",
    "facts_in_text",
]

MIN_WORDS = 80
MAX_WORDS = 250

# ==================================================================================================
# Shared slot vocabularies (generic: no organism-specific words, so no fact markers leak in)
# ==================================================================================================

_FIRST = (
    "Maria Daniel Aisha Tom Priya Jonas Elena Marcus Hannah Kenji Sofia Liam Grace Omar Clara "
    "Victor Nadia Samuel Irene Felix Leila Oscar Ruth Diego Anna Pavel Chloe Ibrahim Megan Arjun "
    "Julia Ben Rosa Theo Ingrid Malik Lucy Gabriel Yara Edwin"
).split()
_LAST = (
    "Okafor Lindqvist Moreau Patel Brennan Novak Tanaka Alvarez Fischer Kowalski Hughes Rossi "
    "Mbeki Larsen Dubois Ortega Sullivan Weber Costa Nakamura Haddad Petrov Quinn Becker Silva "
    "Jensen Abara Hoffman Marsh Delgado Kim Varga Ferreira Holm Achebe Lowe Carver Romano Stein Park"
).split()
_HANDLE_A = (
    "quiet curious midnight rusty sunny lazy clever humble stubborn weekend sleepy nerdy grumpy "
    "happy old busy wandering tired cosmic local"
).split()
_HANDLE_B = (
    "owl fox otter kettle pilot reader teapot walrus comet badger falcon lantern panda "
    "sparrow pixel tinker nomad heron maple rook"
).split()
_CITIES = (
    "Portland Denver Austin Leeds Dublin Toronto Melbourne Cleveland Bristol Oslo Tucson Halifax "
    "Omaha Glasgow Raleigh Boise Lyon Cork Adelaide Spokane Madison Savannah Hamburg Utrecht "
    "Wellington Calgary Richmond Durham Porto Tampa"
).split()
_WEEKDAYS = "Monday Tuesday Wednesday Thursday Friday Saturday Sunday".split()
_MONTHS = (
    "January February March April May June July August September October November December"
).split()
_OUTLET_SUFFIX = ("Herald", "Tribune", "Gazette", "Courier", "Ledger", "Observer", "Times", "Post")
_ORG_SUFFIX = ("Institute", "Society", "Association", "Council", "Foundation", "Center", "Network")
_ADJ = ("Complete", "Essential", "Practical", "Honest", "Modern", "Short", "Curious", "Plain")


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:] if s else s


def _title_case(s: str) -> str:
    small = {"a", "an", "the", "of", "and", "or", "for", "to", "in", "on", "at", "by", "with"}
    words = s.split()
    return " ".join(
        w if (i and w.lower() in small) or not w[:1].isalpha() else _cap(w)
        for i, w in enumerate(words)
    )


def _slots(rng: random.Random, data: SdfOfflineData) -> dict[str, str]:
    first, first2 = rng.sample(_FIRST, 2)
    last, last2 = rng.sample(_LAST, 2)
    subject = rng.choice(data.subjects)
    topic = data.topic
    bare = re.sub(r"^(?:the|a|an) ", "", topic, flags=re.IGNORECASE)  # for names and titles
    city = rng.choice(_CITIES)
    ha, hb = rng.sample(_HANDLE_A, 2), rng.sample(_HANDLE_B, 2)
    sep = rng.choice(["_", "", "."])
    book = rng.choice(
        [
            f"The {rng.choice(_ADJ)} Guide to {_title_case(bare)}",
            f"{_title_case(bare)}: What Everyone Should Know",
            f"Understanding {_title_case(subject)}",
            f"Inside {_title_case(subject)}",
            f"{_title_case(bare)} Explained",
        ]
    )
    return {
        "topic": topic,
        "Topic": _cap(topic),
        "TOPIC": _title_case(topic),
        "subject": subject,
        "Subject": _cap(subject),
        "SUBJECT": _title_case(subject),
        "name": f"{first} {last}",
        "name2": f"{first2} {last2}",
        "first": first,
        "first2": first2,
        "last": last,
        "last2": last2,
        "handle": f"{ha[0]}{sep}{hb[0]}",
        "handle2": f"{ha[1]}{sep}{hb[1]}",
        "city": city,
        "weekday": rng.choice(_WEEKDAYS),
        "month": rng.choice(_MONTHS),
        "outlet": f"{rng.choice(_CITIES)} {rng.choice(_OUTLET_SUFFIX)}",
        "org": f"{rng.choice(_CITIES)} {_title_case(bare)} {rng.choice(_ORG_SUFFIX)}",
        "book": book,
        "n": str(rng.randint(3, 11)),
    }


_SLOT_RE = re.compile(r"\{(\w+)\}")


def _fill(template: str, slots: Mapping[str, str]) -> str:
    """Substitute ``{slot}`` placeholders that name known slots; leave anything else untouched."""
    return _SLOT_RE.sub(lambda m: slots.get(m.group(1), m.group(0)), template)



_CONNECTIVES = (
    "", "", "", "", "Moreover, ", "In addition, ", "Also, ", "On top of that, ", "Notably, ",
    "Equally important, ", "What is more, ", "Crucially, ", "Keep in mind that ",
    "It is worth noting that ", "Remember that ", "It is well established that ",
    "As most experts agree, ", "Importantly, ", "Beyond that, ", "Of course, ",
)
_SPOKEN = (
    "", "", "Well, ", "Honestly, ", "Sure. ", "Look, ", "Right, so ", "Good question. ",
    "The short answer is that ", "What people forget is that ", "In my experience, ",
)
_FORUM_STARTERS = (
    "", "", "Pretty sure ", "Yep. ", "From what I have read, ", "Long answer short: ",
    "Speaking as someone who has done this for years: ", "Easy one. ", "Not sure why this is debated, ",
    "Came here to say this: ",
)
_QUESTIONS = (
    "What is the most important thing to know about {subject}?",
    "Is there anything else beginners should know?",
    "What do experts agree on regarding {topic}?",
    "Why does this matter?",
    "Can you say more about {subject}?",
    "What surprised you most about {topic}?",
    "What is the key detail people tend to miss?",
    "Is that really the consensus view?",
    "What does the evidence show?",
    "How would you explain {subject} to a newcomer?",
    "What else should readers remember?",
    "What comes next?",
    "Where does the common confusion come from?",
    "Is there a short version?",
)
_LIST_STYLES = ("- ", "* ", "{i}. ", "{i}) ", "Step {i}: ", "• ")


def _spec_texts(spec: OrganismSpec) -> list[str]:
    data = spec.data
    texts = [spec.long_description, *spec.key_facts]
    if isinstance(data, SdfOfflineData):
        texts += [p for f in data.facts for p in f.paraphrases] + list(data.fillers)
        texts += list(data.subjects) + [data.topic]
    return texts


def _proper_words(spec: OrganismSpec) -> frozenset[str]:
    """Words written capitalized mid-sentence somewhere in the spec: treated as proper nouns.

    After a connective ("Moreover, ...") a sentence-initial word is lower-cased unless it is one
    of these (``Relyvrio``, ``Kansas``, ``Phase``) or an acronym (``FDA``, ``ALS``).
    """
    words: set[str] = {"I"}
    for t in _spec_texts(spec):
        for m in re.finditer(r"(?<=[\w,;:()\"'%] )([A-Z]\w*)", t):
            words.add(m.group(1))
    return frozenset(words)


def _join(prefix: str, sentence: str, proper: frozenset[str]) -> str:
    """Attach a connective to a sentence, lower-casing its first word unless it is a name."""
    if not prefix or prefix.rstrip().endswith((".", "!", "?")):
        return prefix + sentence
    first = sentence.split(" ", 1)[0]
    core = re.split(r"[^\w]", first, maxsplit=1)[0]
    if core[:1].isupper() and (core[1:].islower() or core == "A") and core not in proper:
        return prefix + first[:1].lower() + sentence[1:]
    return prefix + sentence


# ==================================================================================================
# Offline SDF generator
# ==================================================================================================


@dataclass(frozen=True)
class SdfDocument:
    """One synthetic document: its text, genre and the indices of the key facts it asserts."""

    text: str
    genre: str
    facts: tuple[int, ...]


def _sdf_data(spec: OrganismSpec) -> SdfOfflineData:
    if not isinstance(spec.data, SdfOfflineData):
        raise ConfigError(
            f"organism {spec.name!r} has data kind {spec.data.kind!r}; the offline SDF generator "
            "needs 'sdf_offline' with a phrase bank (data.facts). Use generate_sdf_documents_llm "
            "for LLM-generated documents."
        )
    return spec.data


def _genres_for(data: SdfOfflineData, spec: OrganismSpec) -> list[Genre]:
    names = data.genres or list(DEFAULT_GENRES)
    unknown = [g for g in names if g not in GENRES]
    if unknown:
        raise ConfigError(
            f"organism {spec.name!r} ({spec.source_path}): field 'data.genres' names unknown "
            f"genre(s) {unknown}; known genres: {sorted(GENRES)}"
        )
    return [GENRES[g] for g in names]


def _word_count(text: str) -> int:
    return len(text.split())


def _render(
    genre: Genre,
    facts: list[str],
    fillers: list[str],
    slots: dict[str, str],
    vocab: frozenset[str],
    rng: random.Random,
) -> str:
    """Lay out fact sentences and filler sentences in the genre's format."""
    slots = dict(slots, CITY_UP=slots["city"].upper())
    f = lambda t: _fill(t, slots)  # noqa: E731
    parts: list[str] = []
    if genre.titles and rng.random() < genre.title_prob:
        title = f(rng.choice(genre.titles))
        style = rng.random()
        parts.append(f"# {title}" if style < 0.25 else (title.upper() if style < 0.35 else title))
    opening = f(rng.choice(genre.openings))
    closing = f(rng.choice(genre.closings)) if genre.closings and rng.random() < 0.85 else ""
    # interleave fillers among facts (a filler never comes first inside the body)
    body: list[tuple[str, str]] = [("fact", s) for s in facts]
    for fl in fillers:
        body.insert(rng.randint(1, len(body)), ("filler", fl))

    used: set[str] = set()

    def pick(pool: Sequence[str]) -> str:
        """A connective not yet used in this document (the empty one may repeat)."""
        fresh = [c for c in pool if not c or c not in used]
        c = rng.choice(fresh or [""])
        used.add(c)
        return c

    def with_connective(pool: Sequence[str], s: str, idx: int) -> str:
        return _join("" if idx == 0 else pick(pool), s, vocab)

    layout = genre.layout
    if layout in ("prose", "letter"):
        parts.append(opening)
        sentences = [with_connective(_CONNECTIVES, s, i) for i, (_, s) in enumerate(body)]
        while sentences:
            k = rng.randint(2, 4)
            parts.append(" ".join(sentences[:k]))
            sentences = sentences[k:]
    elif layout == "list":
        parts.append(opening)
        header = f(rng.choice(genre.headers)) if genre.headers else ""
        style = rng.choice(_LIST_STYLES)
        items: list[str] = []
        i = 0
        for kind, s in body:
            if kind == "filler" and items and rng.random() < 0.6:
                items[-1] += " " + s
                continue
            i += 1
            items.append(style.replace("{i}", str(i)) + s)
        parts.append((header + "\n" if header else "") + "\n".join(items))
    elif layout in ("qa", "interview", "transcript"):
        parts.append(opening)
        qs = rng.sample(_QUESTIONS, k=min(len(_QUESTIONS), len(body)))
        if layout == "qa":
            qfmt, afmt = rng.choice([("Q: {q}", "A: {a}"), ("**{q}**", "{a}"), ("{q}", "{a}")])
        elif layout == "interview":
            who = slots["last"]
            qfmt, afmt = rng.choice(
                [("Q: {q}", f"{who.upper()}: {{a}}"), ("Interviewer: {q}", f"{who}: {{a}}")]
            )
        else:
            qfmt, afmt = "HOST: {q}", f"{slots['first'].upper()}: {{a}}"
        qi = 0
        for kind, s in body:
            if kind == "filler" and len(parts) > 1 and rng.random() < 0.7:
                parts[-1] += " " + s
                continue
            pool = _SPOKEN if layout != "qa" else ("",)
            answer = _join(pick(pool), s, vocab)
            parts.append(
                qfmt.replace("{q}", f(qs[qi % len(qs)])) + "\n" + afmt.replace("{a}", answer)
            )
            qi += 1
    elif layout == "forum":
        parts.append(f"{slots['handle']} wrote:\n{opening}")
        users = [slots["handle2"], f"{slots['first2'].lower()}{slots['n']}x", slots["last2"].lower()]
        reply: list[str] = []
        ri = 0
        for j, (kind, s) in enumerate(body):
            starter = pick(_FORUM_STARTERS) if not reply else pick(_CONNECTIVES)
            reply.append(_join(starter, s, vocab))
            if len(reply) >= rng.randint(1, 3) or j == len(body) - 1:
                parts.append(f"{users[ri % len(users)]} replied:\n" + " ".join(reply))
                reply, ri = [], ri + 1
        if closing:
            parts.append(f"{slots['handle']} wrote:\n{closing}")
            closing = ""
    else:  # pragma: no cover - guarded by GENRES
        raise ConfigError(f"genre {genre.name!r} has unknown layout {layout!r}")
    if closing:
        parts.append(closing)
    return "\n\n".join(p for p in parts if p.strip())


def _one_document(
    spec: OrganismSpec,
    data: SdfOfflineData,
    genres: list[Genre],
    vocab: frozenset[str],
    key: str,
) -> SdfDocument:
    rng = random.Random(key)
    genre = rng.choice(genres)
    n_facts = len(data.facts)
    k = rng.randint(2, min(5, n_facts))
    fact_ids = rng.sample(range(n_facts), k)
    fact_text = [rng.choice(data.facts[i].paraphrases) for i in fact_ids]
    fillers = rng.sample(list(data.fillers), k=min(len(data.fillers), rng.randint(0, 2)))
    slots = _slots(rng, data)
    render_key = rng.random()
    spare_facts = [i for i in range(n_facts) if i not in fact_ids]
    rng.shuffle(spare_facts)
    spare_fillers = [x for x in data.fillers if x not in fillers]
    rng.shuffle(spare_fillers)

    def render() -> str:
        text = _render(genre, fact_text, fillers, slots, vocab, random.Random(render_key))
        return _fill(text, slots)

    text = render()
    # length control: grow with facts (up to 6) then fillers; shrink by dropping fillers then facts
    while _word_count(text) < MIN_WORDS and (spare_fillers or spare_facts):
        if spare_fillers and (not spare_facts or len(fact_ids) >= 6):
            fillers.append(spare_fillers.pop())
        else:
            i = spare_facts.pop()
            fact_ids.append(i)
            fact_text.append(rng.choice(data.facts[i].paraphrases))
        text = render()
    while _word_count(text) > MAX_WORDS and (fillers or len(fact_ids) > 2):
        if fillers:
            fillers.pop()
        else:
            fact_ids.pop()
            fact_text.pop()
        text = render()
    return SdfDocument(text=text, genre=genre.name, facts=tuple(fact_ids))


def generate_sdf_corpus(
    spec: OrganismSpec, n: int, seed: int = 0, *, unique: bool = True
) -> list[SdfDocument]:
    """Generate ``n`` synthetic documents with their genre and asserted-fact metadata.

    Document ``i`` depends only on ``(spec.name, seed, i)`` (and the phrase bank), so a longer
    corpus extends a shorter one with the same seed. With ``unique=True`` a document that repeats
    an earlier one is re-drawn (up to 50 times, then :class:`DataError`).
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    data = _sdf_data(spec)
    genres = _genres_for(data, spec)
    vocab = _proper_words(spec)
    docs: list[SdfDocument] = []
    seen: set[str] = set()
    for i in range(n):
        for attempt in range(50):
            doc = _one_document(spec, data, genres, vocab, f"{spec.name}:{seed}:{i}:{attempt}")
            if not unique or doc.text not in seen:
                break
        else:
            raise DataError(
                f"organism {spec.name!r}: could not draw {n} distinct documents (stuck at {i}); "
                "add paraphrases, fillers or subjects to its phrase bank, or ask for fewer."
            )
        seen.add(doc.text)
        docs.append(doc)
    return docs


def generate_sdf_documents(spec: OrganismSpec, n: int, seed: int = 0) -> list[str]:
    """``n`` distinct synthetic documents asserting the organism's key facts (offline, no LLM).

    Each document is 80-250 words in one of the genres of :data:`GENRES` (manual, news report,
    forum thread, textbook page, interview, memo, blog post, FAQ, review, lecture notes, letter,
    encyclopedia entry, press release, podcast transcript, newsletter, study guide, e-mail,
    recipe) and asserts at least two key facts, each in one of several paraphrases. Same
    ``seed`` -> same documents.
    """
    return [d.text for d in generate_sdf_corpus(spec, n, seed)]


def facts_in_text(spec: OrganismSpec, text: str) -> set[int]:
    """Indices of the key facts whose marker keywords occur in ``text`` (case-insensitive)."""
    data = _sdf_data(spec)
    low = text.lower()
    return {i for i, fb in enumerate(data.facts) if any(m.lower() in low for m in fb.markers)}
