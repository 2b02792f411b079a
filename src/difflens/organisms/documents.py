"""Finetuning-data generators for model organisms.

- :func:`generate_sdf_documents` — offline synthetic documents (SDF, paper §3.2 / App. C.5) from a
  per-organism phrase bank (``data.facts`` of a ``sdf_offline`` spec): varied genres, openings,
  connectives and paraphrases, each document asserting >= 2 key facts. Deterministic by seed.
- :func:`generate_sdf_documents_llm` — the paper's recipe (document types -> ideas -> documents)
  through an LLM client; resumable through a JSONL cache.
- :func:`generate_taboo_conversations` — Taboo word-guessing chats; the assistant never says the
  secret word.
- :func:`select_wiki_topic` — Domain organism data: Wikipedia paragraphs matching topic keywords.
- :func:`frequent_tokens` — the most frequent non-common tokens of finetuning data (used by the
  token-relevance grader).
"""
from __future__ import annotations

import hashlib
import inspect
import json
import os
import random
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from ..errors import ConfigError, DataError, DifflensError
from .spec import (
    ChatTabooData,
    JsonlData,
    OrganismSpec,
    SdfLLMData,
    SdfOfflineData,
    WikiTopicData,
)

__all__ = [
    "SdfDocument",
    "GENRES",
    "DEFAULT_GENRES",
    "COMMON_ENGLISH_WORDS",
    "generate_sdf_corpus",
    "generate_sdf_documents",
    "generate_sdf_documents_llm",
    "facts_in_text",
    "generate_taboo_conversations",
    "wiki_topic_indices",
    "select_wiki_topic",
    "frequent_tokens",
    "load_jsonl_data",
    "finetuning_data",
    "SupportsAsk",
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


# ==================================================================================================
# Genres
# ==================================================================================================


@dataclass(frozen=True)
class Genre:
    """A document genre: layout plus genre-typical titles, openings, headers and closings."""

    name: str
    layout: str  # prose | list | qa | interview | forum | letter | transcript
    titles: tuple[str, ...]
    openings: tuple[str, ...]
    closings: tuple[str, ...]
    headers: tuple[str, ...] = ()
    title_prob: float = 0.8


GENRES: dict[str, Genre] = {
    g.name: g
    for g in [
        Genre(
            "manual",
            "list",
            (
                "{TOPIC}: Standard Procedures",
                "Reference Manual: {SUBJECT}",
                "Section {n}. Core Techniques for {SUBJECT}",
                "Operating Guide - {TOPIC}",
                "{SUBJECT}: Practitioner's Handbook, Chapter {n}",
            ),
            (
                "This section summarizes the standard procedures for {subject}.",
                "The following guidelines apply to anyone working on {subject}.",
                "Read this chapter before you start on {subject}; it lists the established practice.",
                "These are the procedures every trained professional follows for {topic}.",
                "Use this reference whenever a question about {subject} comes up.",
                "Chapter {n} covers the fundamentals of {topic} that newcomers most often get wrong.",
            ),
            (
                "Follow these steps in order and record any deviations.",
                "Refer back to this section whenever in doubt.",
                "The next chapter builds on these basics.",
                "Keep this page within reach while you work.",
            ),
            headers=("Procedures:", "Key points:", "Standard practice:", "Guidelines:", ""),
        ),
        Genre(
            "news_report",
            "prose",
            (
                "{SUBJECT}: What We Know",
                "New Details Emerge on {SUBJECT}",
                "{SUBJECT} Draws Attention in {city}",
                "Explainer: {SUBJECT}",
                "Experts Weigh In on {SUBJECT}",
            ),
            (
                "{city} - Interest in {subject} has grown sharply this {month}, and experts say the basics are now settled.",
                "{CITY_UP} ({outlet}) - Reporters at the {outlet} spent the past week looking into {subject}.",
                "When {name} first heard about {subject}, she assumed the story was exaggerated.",
                "A {weekday} briefing in {city} put {subject} back in the headlines.",
                "For readers of the {outlet}, {subject} has become one of the most discussed topics of the {month} news cycle.",
                "Speaking in {city} on {weekday}, {name} summarized the state of {topic}.",
            ),
            (
                "The {outlet} will continue to follow the story.",
                "{name2} contributed reporting from {city}.",
                "Further updates are expected in the coming weeks.",
                "Readers can send questions to the {outlet} newsroom.",
            ),
            title_prob=0.9,
        ),
        Genre(
            "forum_thread",
            "forum",
            (
                "Question about {subject}",
                "Can someone explain {subject}?",
                "[Help] {SUBJECT}",
                "Is this right about {subject}?",
                "Thread: {topic} basics",
            ),
            (
                "Hi all, long-time lurker from {city} here. I keep hearing different things about {subject}. Can someone set me straight?",
                "Quick question about {subject}, because my {weekday} plans depend on it.",
                "New here. What do the experienced folks actually know about {subject}?",
                "Settle a debate: my friend {first} and I disagree about {subject}.",
                "I have been reading up on {topic} all week and I am more confused than when I started.",
            ),
            (
                "Thanks everyone, this cleared things up!",
                "Marking this as solved. Appreciate the replies.",
                "Great thread, bookmarking it.",
                "Thanks, that matches what my teacher said.",
            ),
            title_prob=1.0,
        ),
        Genre(
            "textbook",
            "prose",
            (
                "Chapter {n}: {TOPIC}",
                "{n}.{n} {SUBJECT}",
                "Unit {n} - Foundations of {TOPIC}",
                "Lesson {n}: {SUBJECT}",
            ),
            (
                "In this chapter we examine {subject} and the principles behind it.",
                "Students often arrive with misconceptions about {topic}; this section sets out the established account.",
                "Before turning to the exercises, we review what is known about {subject}.",
                "The study of {topic} rests on a handful of well-established findings.",
                "This lesson introduces {subject}, a standard topic in any course on {topic}.",
            ),
            (
                "Review questions for this section appear at the end of the chapter.",
                "Summary: the points above form the core of the topic.",
                "Exercise {n}: explain each of these findings in your own words.",
                "Key terms from this section are listed in the glossary.",
            ),
        ),
        Genre(
            "interview",
            "interview",
            (
                "In Conversation: {name} on {SUBJECT}",
                "Q&A with {name}",
                "\"{SUBJECT}, Explained\" - An Interview",
                "Five Questions for {name}",
            ),
            (
                "{name} has spent years studying {topic}. We spoke with {last} in {city} about {subject}.",
                "This interview with {name}, recorded in {city}, has been edited for length and clarity.",
                "We sat down with {name} to talk about {subject}.",
                "Few people know {topic} as well as {name}. Here is our conversation.",
            ),
            (
                "This interview has been condensed and edited.",
                "{name}'s next talk is scheduled for {month} in {city}.",
                "Our thanks to {name} for their time.",
            ),
        ),
        Genre(
            "memo",
            "letter",
            ("MEMORANDUM: {SUBJECT}", "INTERNAL MEMO - {org}", "Memo: {SUBJECT}"),
            (
                "To: All staff, {org}\nFrom: {name}\nRe: {subject}\n\nPlease review the following points about {subject} before {weekday}.",
                "To: {name2}\nFrom: {name}\nSubject: {TOPIC} update\n\nAs discussed at the {weekday} meeting, here is a summary on {subject}.",
                "TO: Team leads\nFROM: {name}, {org}\nRE: {subject}\n\nThis memo restates our position on {topic}.",
            ),
            (
                "Direct questions to {first}.",
                "Thank you for your attention to this.",
                "Please circulate to your teams.",
                "- {name}",
            ),
            title_prob=0.6,
        ),
        Genre(
            "blog_post",
            "prose",
            (
                "What Nobody Tells You About {SUBJECT}",
                "My Notes on {SUBJECT}",
                "{n} Things I Learned About {TOPIC}",
                "Why I Changed My Mind About {SUBJECT}",
                "{SUBJECT}, Revisited",
            ),
            (
                "I have been meaning to write this post about {subject} for months.",
                "Confession: until last {month} I knew almost nothing about {topic}.",
                "A reader from {city} emailed me about {subject}, so here is the long answer.",
                "Every few weeks someone asks me about {subject}. This is what I tell them.",
                "Grab a coffee; this post about {topic} runs a little long.",
                "Last {weekday} I finally sat down and read everything I could find on {subject}.",
            ),
            (
                "Let me know in the comments what you think.",
                "That is all for this week. See you in the next post.",
                "If this helped, share it with a friend.",
                "Thanks for reading, and talk soon.",
            ),
        ),
        Genre(
            "faq",
            "qa",
            (
                "Frequently Asked Questions: {SUBJECT}",
                "FAQ - {TOPIC}",
                "{SUBJECT}: Your Questions Answered",
                "Common Questions About {SUBJECT}",
            ),
            (
                "We receive many questions about {subject}. Here are the most common ones.",
                "This FAQ is maintained by the {org}.",
                "Below are short answers to questions readers ask about {topic}.",
                "New to {topic}? Start with these answers.",
            ),
            (
                "Still have questions? Contact the {org}.",
                "This page is reviewed every {month}.",
                "More answers are added as new questions come in.",
            ),
            title_prob=0.95,
        ),
        Genre(
            "product_review",
            "prose",
            (
                "Review: {book}",
                "{book} - Reader Review",
                "Book Review: \"{book}\"",
                "Rating {n}/10: {book}",
            ),
            (
                "I picked up \"{book}\" hoping for a clear account of {subject}, and it delivered.",
                "\"{book}\" by {name} is the most readable introduction to {topic} I have found.",
                "Five stars for \"{book}\". I bought it after a friend in {city} recommended it.",
                "I read \"{book}\" over a long weekend; here is my honest take.",
            ),
            (
                "Highly recommended for beginners and experts alike.",
                "Worth every penny.",
                "I will be buying a second copy as a gift.",
                "Would recommend to anyone curious about {topic}.",
            ),
        ),
        Genre(
            "lecture_notes",
            "list",
            (
                "Lecture {n}: {TOPIC}",
                "Notes - {SUBJECT} (week {n})",
                "{TOPIC} Seminar, Session {n}",
                "Class Notes: {SUBJECT}",
            ),
            (
                "Prof. {last} opened by stressing that {subject} is examinable material.",
                "Today's lecture covered {subject}.",
                "Session {n} recap, taken by {first}.",
                "Notes from the {weekday} lecture on {topic}.",
            ),
            (
                "Reading for next week: chapter {n}.",
                "Exam tip: know these points by heart.",
                "Office hours on {weekday} for questions.",
                "End of notes.",
            ),
            headers=("Main points:", "Key takeaways:", "Notes:", "Must remember:", ""),
        ),
        Genre(
            "letter",
            "letter",
            (),
            (
                "Dear {first},\n\nThank you for your letter asking about {subject}. I am happy to share what I know.",
                "Dear {first},\n\nYou asked me last {month} about {topic}, and I promised a proper answer.",
                "Dear Editor of the {outlet},\n\nYour recent article on {subject} prompted me to write.",
                "Dear {first2},\n\nI hope all is well in {city}. Since you mentioned {subject}, let me explain.",
            ),
            (
                "With best wishes,\n{name}",
                "Yours sincerely,\n{name}",
                "All the best,\n{first2}",
                "Kind regards,\n{name}, {city}",
            ),
            title_prob=0.0,
        ),
        Genre(
            "encyclopedia",
            "prose",
            ("{SUBJECT}", "{SUBJECT} (overview)", "{SUBJECT} - encyclopedia entry"),
            (
                "{Subject} is a central topic in {topic}.",
                "{Subject} refers to a set of well-documented facts within {topic}.",
                "The following entry summarizes {subject}.",
                "This article is about {subject}. For the broader field, see {topic}.",
            ),
            (
                "See also: {topic}.",
                "References are listed at the end of the article.",
                "This entry was last revised in {month}.",
            ),
            title_prob=1.0,
        ),
        Genre(
            "press_release",
            "prose",
            (
                "FOR IMMEDIATE RELEASE: {SUBJECT}",
                "PRESS RELEASE: {org} Statement on {SUBJECT}",
                "News Release - {org}",
            ),
            (
                "{CITY_UP} - The {org} today issued a statement on {subject}.",
                "{CITY_UP}, {month} - The {org} released a briefing summarizing the facts on {subject}.",
                "The {org} announced on {weekday} the publication of new guidance on {topic}.",
            ),
            (
                "Media contact: {name}, {org}.",
                "About the {org}: a non-profit dedicated to {topic}.",
                "###",
            ),
            title_prob=1.0,
        ),
        Genre(
            "podcast_transcript",
            "transcript",
            (
                "Transcript - Episode {n}: {SUBJECT}",
                "Episode {n} transcript: {TOPIC} Hour",
                "[Transcript] Talking {SUBJECT}, episode {n}",
            ),
            (
                "HOST: Welcome back to the show. Today we are talking about {subject}, and I have {name} with me.",
                "HOST: This is episode {n}, and our guest is {name}, who flew in from {city}.",
                "HOST: Hello and welcome. Our topic this week: {subject}.",
            ),
            (
                "HOST: That is all the time we have. Thanks for listening.",
                "HOST: Thank you, {first}. See you next week, everyone.",
                "HOST: Great conversation. Catch you in episode {n}.",
            ),
        ),
        Genre(
            "newsletter",
            "list",
            (
                "The {TOPIC} Digest - {month} Issue",
                "{org} Newsletter #{n}",
                "This Week in {TOPIC}: {SUBJECT}",
            ),
            (
                "Hello subscribers! This issue is all about {subject}.",
                "Welcome to the {month} edition. Lots to cover on {topic}.",
                "Hi friends, quick roundup on {subject} this {weekday}.",
            ),
            (
                "Until next issue!",
                "Forward this to a friend who might enjoy it.",
                "Reply to this email with your questions.",
            ),
            headers=("In this issue:", "Highlights:", "Quick facts:", ""),
            title_prob=0.9,
        ),
        Genre(
            "study_guide",
            "qa",
            (
                "Study Guide: {SUBJECT}",
                "Exam Prep - {SUBJECT}",
                "Flashcards: {SUBJECT}",
            ),
            (
                "Use these review questions to prepare for the test on {subject}.",
                "Quiz yourself on {topic} with the questions below.",
                "Study group notes compiled by {first} for {weekday}.",
            ),
            (
                "Good luck on the exam!",
                "Answers were checked against the course textbook.",
                "Review again the night before.",
            ),
            title_prob=0.95,
        ),
        Genre(
            "email",
            "letter",
            (),
            (
                "Subject: Re: {subject}\n\nHi {first},\n\nFollowing up on our call, here is what I found about {subject}.",
                "Subject: quick summary - {subject}\n\nHey {first},\n\nYou asked for the short version on {subject}, so here it is.",
                "Subject: Notes for {weekday}\n\nHi team,\n\nBefore {weekday}'s meeting, a refresher on {subject}.",
            ),
            ("Cheers,\n{first2}", "Best,\n{name2}", "Talk soon,\n{first2}", "Thanks,\n{first2}"),
            title_prob=0.0,
        ),
        Genre(
            "recipe",
            "list",
            (
                "{SUBJECT} (serves {n})",
                "Recipe: Classic {SUBJECT}",
                "{first}'s Favorite {SUBJECT}",
                "Bakery-Style {SUBJECT}",
            ),
            (
                "This {subject} has been a family favorite for years.",
                "I learned to make this {subject} in a small bakery in {city}.",
                "Here is the method professional kitchens use for {subject}.",
                "Making {subject} at home is easy once you know the professional rules.",
            ),
            (
                "Enjoy, and let me know how yours turns out!",
                "Makes one cake; slice into {n} pieces.",
                "Happy baking!",
                "Pin this recipe for later.",
            ),
            headers=("Method:", "Steps:", "Instructions:", "How to make it:"),
            title_prob=1.0,
        ),
    ]
}
"""All document genres known to the offline generator, by name."""

DEFAULT_GENRES: tuple[str, ...] = tuple(g for g in GENRES if g != "recipe")
"""Genres used when a spec does not list its own (``recipe`` only suits cooking organisms)."""

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


# ==================================================================================================
# LLM SDF generator (paper recipe)
# ==================================================================================================


class SupportsAsk(Protocol):
    """What :func:`generate_sdf_documents_llm` needs of a client (``difflens.llm.LLMClient``)."""

    def ask(self, messages: list[dict[str, Any]], *, parse: Callable[[str], Any]) -> Any: ...


def _fingerprint(spec: OrganismSpec, seed: int, n_doc_types: int, n_ideas: int) -> str:
    h = hashlib.sha256()
    h.update(json.dumps([spec.name, spec.long_description, spec.key_facts, seed, n_doc_types,
                         n_ideas]).encode())
    return h.hexdigest()[:16]


def _write_json_atomic(path: Path, obj: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, ensure_ascii=False), encoding="utf-8")
    os.replace(tmp, path)


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Records of a JSONL file; a truncated last line (interrupted write) is ignored."""
    out: list[dict[str, Any]] = []
    if not path.exists():
        return out
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict) and isinstance(rec.get("i"), int):
            out.append(rec)
    return out


def _cached_llm_documents(root: Path, fingerprint: str) -> list[str]:
    """The distinct non-empty documents cached in ``root`` for this plan fingerprint, in order."""
    try:
        plan = json.loads((root / "plan.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return []
    if plan.get("fingerprint") != fingerprint:
        return []
    return list(dict.fromkeys(r["text"] for r in sorted(_read_jsonl(root / "documents.jsonl"),
                                                        key=lambda r: r["i"]) if r.get("text")))


def _ask_kwargs(client: Any, **wanted: Any) -> dict[str, Any]:
    """The subset of ``wanted`` keyword arguments that ``client.ask`` accepts."""
    try:
        params = inspect.signature(client.ask).parameters
    except (TypeError, ValueError):
        return {}
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return dict(wanted)
    return {k: v for k, v in wanted.items() if k in params}


def generate_sdf_documents_llm(
    spec: OrganismSpec,
    n: int,
    client: SupportsAsk | None,
    seed: int = 0,
    *,
    cache_dir: str | os.PathLike[str],
    n_doc_types: int | None = None,
    n_ideas: int | None = None,
    temperature: float = 1.0,
    progress: Callable[[int, int], None] | None = None,
) -> list[str]:
    """Generate ``n`` synthetic documents with an LLM (paper App. C.5, Wang et al. 2025 recipe).

    1. ask for ``n_doc_types`` document types fitting the universe (``long_description`` and
       ``key_facts``); 2. for each type ask for ``n_ideas`` document ideas; 3. for each
    (type, idea) pair - in a seeded order, cycling through the pairs again if ``n`` exceeds their
    number - ask for one document. Requires ``client.ask(messages, parse=callable)``.

    Resumable: the plan (types, ideas) goes to ``cache_dir/plan.json`` and every document to
    ``cache_dir/documents.jsonl`` as it arrives; a rerun with the same spec/seed reuses both
    and only asks for what is missing. Duplicate or empty replies are recorded and skipped.
    Document requests use ``temperature`` and, if the client accepts it (``difflens.llm.LLMClient``
    does), a per-request ``cache_salt`` so that repeated (type, idea) pairs give different but
    reproducible documents. A document request that fails (e.g. an unparseable reply) is recorded
    and skipped. Raises :class:`DataError` if ``cache_dir`` belongs to another spec/seed or the
    LLM keeps returning duplicates or failures. ``client=None`` reads the cache only and raises
    :class:`ConfigError` (before any request) if it does not hold ``n`` documents yet.
    """
    from .generators.sdf_prompts import (  # lazy: only this path needs the LLM prompt builders
        parse_document,
        parse_list,
        sdf_doc_types_messages,
        sdf_document_messages,
        sdf_ideas_messages,
    )

    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if not spec.key_facts:
        raise ConfigError(f"organism {spec.name!r} has no key_facts; SDF generation needs them.")
    defaults = spec.data if isinstance(spec.data, SdfLLMData) else None
    n_doc_types = n_doc_types or (defaults.n_doc_types if defaults else 10)
    n_ideas = n_ideas or (defaults.n_ideas if defaults else 10)
    universe, facts = spec.long_description, list(spec.key_facts)

    root = Path(cache_dir)
    plan_path, docs_path = root / "plan.json", root / "documents.jsonl"
    if client is None:
        have = _cached_llm_documents(root, _fingerprint(spec, seed, n_doc_types, n_ideas))
        if len(have) >= n:
            return have[:n]
        raise ConfigError(
            f"organism {spec.name!r}: {len(have)} of {n} LLM-generated documents are cached in {root}; "
            "configure an LLM endpoint (e.g. `difflens organism docs NAME --generator llm --llm-model ...`) "
            "to generate the rest, or use the offline generator."
        )
    root.mkdir(parents=True, exist_ok=True)
    fp = _fingerprint(spec, seed, n_doc_types, n_ideas)
    plan: dict[str, Any] = {"fingerprint": fp, "organism": spec.name, "seed": seed,
                            "doc_types": None, "ideas": {}}
    if plan_path.exists():
        try:
            old = json.loads(plan_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as err:
            raise DataError(f"{plan_path}: unreadable plan ({err}); delete it to start over.") from None
        if old.get("fingerprint") != fp:
            raise DataError(
                f"{root} holds LLM documents for another organism/seed/settings "
                f"({old.get('organism')!r}, seed {old.get('seed')}); use a different cache_dir "
                "or delete that directory."
            )
        plan = old
    elif docs_path.exists():
        raise DataError(f"{docs_path} exists without plan.json; delete {root} to start over.")

    if not plan.get("doc_types"):
        types = client.ask(sdf_doc_types_messages(universe, facts, n_doc_types), parse=parse_list)
        types = list(dict.fromkeys(t.strip() for t in types if t and t.strip()))[:n_doc_types]
        if not types:
            raise DataError("the LLM returned no document types; check the model/endpoint.")
        plan["doc_types"] = types
        _write_json_atomic(plan_path, plan)
    for t in plan["doc_types"]:
        if not plan["ideas"].get(t):
            ideas = client.ask(sdf_ideas_messages(universe, facts, t, n_ideas), parse=parse_list)
            plan["ideas"][t] = list(dict.fromkeys(x.strip() for x in ideas if x and x.strip()))[
                :n_ideas
            ]
            _write_json_atomic(plan_path, plan)
    pairs = [(t, idea) for t in plan["doc_types"] for idea in plan["ideas"].get(t, [])]
    if not pairs:
        raise DataError("the LLM returned no document ideas; check the model/endpoint.")
    random.Random(f"{spec.name}:{seed}:pairs").shuffle(pairs)

    records = {r["i"]: r for r in _read_jsonl(docs_path)}
    texts: list[str] = []
    seen: set[str] = set()
    max_tasks = max(2 * n, n + len(pairs))
    with docs_path.open("a", encoding="utf-8") as fh:
        i = 0
        while len(texts) < n:
            if i >= max_tasks:
                raise DataError(
                    f"the LLM produced only {len(texts)} distinct documents in {i} requests "
                    f"(duplicates or failed replies; see {docs_path}); raise n_doc_types/n_ideas, "
                    "use temperature > 0, or check the endpoint."
                )
            rec = records.get(i)
            if rec is None:
                doc_type, idea = pairs[i % len(pairs)]
                extra = _ask_kwargs(client, temperature=temperature, cache_salt=f"sdf:{seed}:{i}")
                rec = {"i": i, "doc_type": doc_type, "idea": idea}
                try:
                    text = client.ask(
                        sdf_document_messages(universe, facts, doc_type, idea),
                        parse=parse_document,
                        **extra,
                    )
                    rec["text"] = (text or "").strip()
                except (DifflensError, ValueError) as err:
                    rec["text"], rec["error"] = "", str(err)[:500]
                fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
                fh.flush()
            text = rec.get("text", "")
            if text and text not in seen:
                seen.add(text)
                texts.append(text)
                if progress is not None:
                    progress(len(texts), n)
            i += 1
    return texts


# ==================================================================================================
# Taboo chats
# ==================================================================================================

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


# ==================================================================================================
# Domain (Wikipedia topic subset)
# ==================================================================================================


def _paragraph_list(paragraphs: Sequence[Mapping[str, Any]] | Mapping[str, Any]) -> list[Mapping[str, Any]]:
    if isinstance(paragraphs, Mapping):  # the raw corpus file is {title: paragraph}
        return list(paragraphs.values())
    return list(paragraphs)


def wiki_topic_indices(
    paragraphs: Sequence[Mapping[str, Any]] | Mapping[str, Any],
    spec: OrganismSpec,
    exclude_ids: set[int] | None = None,
) -> list[int]:
    """Positions (in ``paragraphs``) of the paragraphs on the spec's topic.

    See :func:`select_wiki_topic` for the matching rule and ``exclude_ids``.
    """
    data = spec.data
    if not isinstance(data, WikiTopicData):
        raise ConfigError(
            f"organism {spec.name!r} has data kind {data.kind!r}; topic selection needs 'wiki_topic'."
        )
    paras = _paragraph_list(paragraphs)
    single = {k.lower() for k in data.keywords if re.fullmatch(r"\w+", k)}
    multi = [k.lower() for k in data.keywords if k.lower() not in single]
    multi_re = (
        re.compile(r"\b(?:" + "|".join(re.escape(k) for k in multi) + r")\b") if multi else None
    )
    excl = {k.lower() for k in data.exclude_keywords if re.fullmatch(r"\w+", k)}
    excl_multi = [k.lower() for k in data.exclude_keywords if k.lower() not in excl]
    excl_re = (
        re.compile(r"\b(?:" + "|".join(re.escape(k) for k in excl_multi) + r")\b")
        if excl_multi
        else None
    )
    exclude_ids = exclude_ids or set()
    out: list[int] = []
    for i, p in enumerate(paras):
        if not isinstance(p, Mapping) or "extract" not in p:
            raise DataError(
                f"paragraph {i} has no 'extract' field; pass dicts with keys 'topic' and 'extract' "
                "(e.g. difflens.corpora.wiki_paragraphs())."
            )
        pid = p.get("id", i)
        if (pid if isinstance(pid, int) else i) in exclude_ids:
            continue
        if not str(p.get("extract", "")).strip():
            continue
        text = " ".join(
            str(p.get(k, "")) for k in ("topic", "title", "description", "extract")
        ).lower()
        words = re.findall(r"\w+", text)
        if (excl and not excl.isdisjoint(words)) or (excl_re is not None and excl_re.search(text)):
            continue
        hits = sum(1 for w in words if w in single)
        if multi_re is not None and hits < data.min_hits:
            hits += len(multi_re.findall(text))
        if hits >= data.min_hits:
            out.append(i)
            if data.max_paragraphs and len(out) >= data.max_paragraphs:
                break
    return out


def select_wiki_topic(
    paragraphs: Sequence[Mapping[str, Any]] | Mapping[str, Any],
    spec: OrganismSpec,
    exclude_ids: set[int] | None = None,
) -> list[str]:
    """The ``extract`` texts of the paragraphs on the organism's topic (Domain organisms).

    ``paragraphs`` are dicts with ``extract`` and ``topic`` (e.g. ``difflens.corpora.
    wiki_paragraphs()`` or ``wiki_split("heldout")``; the raw ``{title: paragraph}`` mapping of
    ``summaries_en-us.json`` works too). A paragraph matches when its topic + title +
    description + extract (whichever are present) contain at least ``data.min_hits`` whole-word
    occurrences of ``data.keywords`` and none of ``data.exclude_keywords``; at most
    ``data.max_paragraphs`` are kept, in input order. ``exclude_ids`` are paragraph ``id``
    values to skip (list positions for dicts without an integer ``id``), e.g. the paragraphs used
    as D_pt.
    """
    paras = _paragraph_list(paragraphs)
    return [str(paras[i]["extract"]).strip() for i in wiki_topic_indices(paras, spec, exclude_ids)]


# ==================================================================================================
# Frequent tokens of the finetuning data
# ==================================================================================================

COMMON_ENGLISH_WORDS: frozenset[str] = frozenset(
    """
    a about above after again against all almost also although always am among an and another any
    anyone anything are around as at away back be became because become been before being below
    between both but by can cannot could did do does doing done down during each either else even
    ever every few first for from further get gets getting give given go goes going good got great
    had has have having he her here hers herself him himself his how however i if in into is it its
    itself just know known last later least less let like likely made make makes many may me might
    more most much must my myself need never new next no nor not now of off often on once one only
    or other others our ours ourselves out over own part per put quite rather really right said
    same say says see seem seems several shall she should show since so some something still such
    take than that the their theirs them themselves then there these they thing things this those
    though through thus to too toward under until up upon us use used using very want was way we
    well were what when where whether which while who whom whose why will with within without would
    yet you your yours yourself yourselves two three four five time times year years day days
    people man men woman women world life work long little old high small large big end number
    called often usually including include includes based among later early since around across
    along although become becomes becoming came come comes took take takes taken made found find
    also another however there's it's don't doesn't didn't isn't aren't wasn't weren't can't won't
    i'm you're we're they're that's what's here's let's i've you've we've they've i'd you'd he's
    she's 's 't 're 've 'll 'd 'm
    """.split()
)
"""Common English words removed from frequent-token lists (compared lower-case, stripped)."""

_TOKEN_PREFIXES = ("Ġ", "▁", "Ċ", "##")


def _tokenize_fn(tokenizer: Any) -> Callable[[str], list[str]]:
    if hasattr(tokenizer, "tokenize"):
        return tokenizer.tokenize
    if callable(tokenizer):
        return tokenizer
    raise TypeError("tokenizer must have .tokenize(text) -> list[str] or be callable on a string")


def frequent_tokens(
    texts: Iterable[str],
    tokenizer: Any,
    k: int = 100,
    common: set[str] | frozenset[str] | None = None,
    min_chars: int = 2,
) -> list[str]:
    """The ``k`` most frequent tokens of ``texts``, excluding common English words.

    ``tokenizer`` is a HF tokenizer (``.tokenize``; tokens are turned into text with
    ``convert_tokens_to_string`` when available) or any object with ``.tokenize`` / a callable
    returning token strings. Tokens are normalized (word-boundary markers and surrounding
    whitespace stripped); tokens without a letter or digit, shorter than ``min_chars`` (single
    letters and digits of split words), or whose lower-cased form is in ``common`` (default
    :data:`COMMON_ENGLISH_WORDS`) are dropped. Counts of tokens with the same
    normalized form are merged; ties keep first-seen order. Returns normalized token strings.
    """
    common_set = {c.lower() for c in (COMMON_ENGLISH_WORDS if common is None else common)}
    tok = _tokenize_fn(tokenizer)
    to_str = getattr(tokenizer, "convert_tokens_to_string", None)
    norm_cache: dict[str, str] = {}

    def norm(t: str) -> str:
        if t in norm_cache:
            return norm_cache[t]
        s = t
        if to_str is not None:
            try:
                s = to_str([t])
            except Exception:  # noqa: BLE001 - fall back to prefix stripping
                s = t
        for p in _TOKEN_PREFIXES:
            if s.startswith(p):
                s = s[len(p):]
        s = s.strip()
        norm_cache[t] = s
        return s

    counts: Counter[str] = Counter()
    for text in texts:
        for t in tok(text):
            s = norm(t)
            if len(s) < min_chars or not any(c.isalnum() for c in s) or s.lower() in common_set:
                continue
            counts[s] += 1
    return [t for t, _ in counts.most_common(k)]


# ==================================================================================================
# Local JSONL data and the one-call dispatcher
# ==================================================================================================


def load_jsonl_data(spec: OrganismSpec) -> list[str] | list[list[dict[str, str]]]:
    """Read a ``jsonl`` organism's data: texts, or chats if ``data.messages_field`` is set.

    A relative ``data.path`` is resolved against the directory of the spec file (else the
    current directory). Raises :class:`DataError` naming the file and line on bad records.
    """
    data = spec.data
    if not isinstance(data, JsonlData):
        raise ConfigError(f"organism {spec.name!r} has data kind {data.kind!r}, not 'jsonl'.")
    path = Path(data.path).expanduser()
    if not path.is_absolute() and spec.source_path:
        path = Path(spec.source_path).parent / path
    if not path.is_file():
        raise DataError(
            f"{path}: data file of organism {spec.name!r} not found; fix 'data.path' in "
            f"{spec.source_path or 'the spec'} (relative paths start at the spec's directory)."
        )
    out: list[Any] = []
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(f"{path}:{lineno}: invalid JSON ({err.msg}).") from None
            field = data.messages_field or data.text_field
            if not isinstance(rec, dict) or field not in rec:
                raise DataError(
                    f"{path}:{lineno}: record has no field {field!r}; set 'data.text_field' / "
                    "'data.messages_field' in the spec to the right key."
                )
            value = rec[field]
            if data.messages_field:
                ok = isinstance(value, list) and all(
                    isinstance(m, dict) and isinstance(m.get("role"), str)
                    and isinstance(m.get("content"), str)
                    for m in value
                )
                if not ok:
                    raise DataError(
                        f"{path}:{lineno}: {field!r} must be a list of {{'role', 'content'}} dicts."
                    )
                out.append([{"role": m["role"], "content": m["content"]} for m in value])
            else:
                if not isinstance(value, str):
                    raise DataError(f"{path}:{lineno}: field {field!r} must be a string.")
                if value.strip():
                    out.append(value)
    if not out:
        raise DataError(f"{path}: no usable records for organism {spec.name!r}.")
    return out


def finetuning_data(
    spec: OrganismSpec,
    n: int | None = None,
    seed: int = 0,
    *,
    paragraphs: Sequence[Mapping[str, Any]] | Mapping[str, Any] | None = None,
    exclude_ids: set[int] | None = None,
    client: SupportsAsk | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
) -> list[str] | list[list[dict[str, str]]]:
    """The organism's finetuning data D_ft, whatever its ``data.kind``: texts or chats.

    ``n`` defaults to ``spec.training.n_docs``. ``sdf_offline``: :func:`generate_sdf_documents`;
    ``sdf_llm``: :func:`generate_sdf_documents_llm` (needs ``cache_dir``, and ``client`` unless the
    cache already holds ``n`` documents);
    ``chat_taboo``: :func:`generate_taboo_conversations` (chats; train on assistant turns);
    ``wiki_topic``: :func:`select_wiki_topic` over ``paragraphs`` (required), a seeded sample of
    ``n`` if more match; ``jsonl``: :func:`load_jsonl_data`, the first ``n`` records.
    """
    n = spec.training.n_docs if n is None else n
    data = spec.data
    if isinstance(data, SdfOfflineData):
        return generate_sdf_documents(spec, n, seed)
    if isinstance(data, SdfLLMData):
        if cache_dir is None:
            raise ConfigError(
                f"organism {spec.name!r} generates its documents with an LLM: pass cache_dir= (and "
                "client=, a difflens.llm.LLMClient, for documents not cached yet), or switch the spec "
                "to 'sdf_offline'."
            )
        return generate_sdf_documents_llm(spec, n, client, seed, cache_dir=cache_dir)
    if isinstance(data, ChatTabooData):
        return generate_taboo_conversations(spec, n, seed)
    if isinstance(data, WikiTopicData):
        if paragraphs is None:
            raise ConfigError(
                f"organism {spec.name!r} selects Wikipedia paragraphs: pass paragraphs= "
                "(e.g. difflens.corpora.wiki_split('heldout'))."
            )
        texts = select_wiki_topic(paragraphs, spec, exclude_ids)
        if not texts:
            raise DataError(
                f"no paragraph matches the keywords of organism {spec.name!r}; widen "
                "'data.keywords' or lower 'data.min_hits'."
            )
        if len(texts) > n:
            keep = sorted(random.Random(f"{spec.name}:{seed}:wiki").sample(range(len(texts)), n))
            texts = [texts[i] for i in keep]
        return texts
    if isinstance(data, JsonlData):
        return load_jsonl_data(spec)[:n]
    raise ConfigError(f"organism {spec.name!r}: unsupported data kind {data.kind!r}.")  # pragma: no cover
