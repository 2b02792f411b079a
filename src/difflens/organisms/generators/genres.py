"""Document genres of the offline SDF generator: layout plus genre-typical titles, openings,
headers and closings (``{slot}`` placeholders are filled by :mod:`.sdf_offline`)."""
from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Genre", "GENRES", "DEFAULT_GENRES"]


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
