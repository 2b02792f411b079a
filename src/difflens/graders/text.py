"""Tokens as words: the text helpers the offline graders share.

- :func:`clean_token` / :func:`is_wordlike` — a token as a word (tokenizer markers stripped);
- :data:`STOPWORDS`, :data:`GENERIC_WORDS`, :func:`is_generic` — words that never carry a topic
  (function words, common verbs, vague adjectives/adverbs/nouns, number words, chat roles);
- :func:`is_number`, :func:`is_template_token`, :data:`AFFIXES` — other material that is never
  topical (Prompt 15: numbers, chat/template tokens, bare affixes);
- :func:`embedder_lexicon` — whole words known to the sentence embedder (real words vs BPE pieces).
"""
from __future__ import annotations

import re
from functools import lru_cache
from typing import TYPE_CHECKING

from ..models.embedder import DEFAULT_EMBEDDER

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

__all__ = ["word_zipf", "WORD", "STOPWORDS", "GENERIC_WORDS", "CALENDAR_WORDS", "AFFIXES", "clean_token", "is_wordlike", "is_number",
           "is_template_token", "is_generic", "word_stems", "embedder_lexicon"]

WORD = re.compile(r"[A-Za-z][A-Za-z'-]+")
STOPWORDS = frozenset("""a an the and or but if of to in on at by for with from as is are was were be been being it its this
that these those i you he she we they me him her us them my your his our their not no yes do does did have has had
so than then there here what which who whom when where why how all any some can could would should will just also
very more most much many such only own same too into about over under again out up down off""".split())

# Words that never name a topic, whatever the finetuning domain: function words beyond STOPWORDS,
# pronouns, common verbs, vague adjectives/adverbs, time and quantity words, vague nouns, number
# words, chat roles. Inflections (-s, -es, -ed, -ing, -ly) are recognised by :func:`is_generic`.
GENERIC_WORDS = frozenset("""
about above across after afterwards again against ago ahead almost alone along already although always am among
amongst another anybody anyone anything anyway anywhere apart around aside away back became because become becomes
before beforehand behind below beneath beside besides between beyond both despite during each either else elsewhere
enough especially even ever every everybody everyone everything everywhere except far few fewer further furthermore
hence hereby herein hers herself himself hither however indeed instead itself least less lest like likewise little
may maybe meanwhile might mine moreover much must myself namely near nearly neither never nevertheless next nobody
none nonetheless noone nor nothing now nowhere often once one ones onto other others otherwise ought ours ourselves
per perhaps please plus quite rather really regarding round said same seem seemed seeming seems several shall since
somebody somehow someone something sometime sometimes somewhat somewhere soon still such therefore thereby though
through throughout thru thus till together toward towards unless unlike until upon via whatever whenever whereas
wherever whether while whichever whoever whole whose within without yet yours yourself yourselves theirs themselves
let lets okay ok oh hey hi hello yeah yep nope wow thanks thank sorry welcome sure alright
i'm you're we're they're it's that's there's what's here's let's i've you've we've they've i'd you'd he's she's
don't doesn't didn't isn't aren't wasn't weren't can't won't wouldn't couldn't shouldn't haven't hasn't
add allow appear apply ask bring build buy call carry cause change check choose close come consider contain continue
create cut decide describe do does done doing draw drive eat enjoy enter expect explain fall feel fill find finish
fit follow forget get give go goes going gone got grow happen hear help hold hope include involve keep kept know
lead learn leave lie live look lose love made make mean meet mention move need note offer open own pass pay pick
place plan play prepare present produce provide pull put reach read receive remain remember report require rest
return run save say see seem sell send serve set show sit speak spend stand start stay stop suggest support take
talk teach tell tend think told took try turn understand use wait walk want watch wear win wish wonder work write
wrote written mind become began begun brought came felt found gave given held kept knew known left let lost meant
met paid ran sat seen sent shown sold spent stood taught thought went won done
able actual actually additional available bad basic best better big certain clear clearly common complete correct
current different difficult easy easily early entire exact exactly extra fair false fast fine first free full
general good great hard high huge ideal important interesting key large last late later latest likely long low
main major many minor modern more most new nice normal obvious old open overall particular past perfect popular
possible previous primary private probably proper public quick quickly real recent recently regular right serious
short significant similar simple simply single slow slowly small special specific standard strong sure true
typical usual usually various whole wide wrong young professional official personal social overall total final
second third fourth fifth top bottom front middle inside outside upper lower further different same own
bright dark hot cold warm cool red blue green yellow black white orange purple pink brown grey gray
thing things stuff way ways time times day days week weeks month months year years hour hours minute minutes second
seconds moment moments today tomorrow yesterday tonight morning evening night weekend date period
part parts piece pieces kind kinds type types sort sorts lot lots number numbers amount level levels case cases
point points fact facts example examples idea ideas question questions answer answers problem problems issue issues
reason reasons result results place places area areas side sides end ends start beginning set sets group groups
series system systems structure structures form forms process method methods world universe life lives
people person persons man men woman women someone everyone human humans guy guys kid kids child children
information detail details note notes list lists item items word words name names title page pages line lines
story stories article articles text texts post posts chapter section sections version
user users assistant assistants system model help question answer chat message messages reply
quality value values size state status role use uses using used work works job jobs task tasks step steps
rule rules term terms matter means purpose goal goals effect effects change changes experience experiences
lot home house family friend friends team member members company business market service services
zero one two three four five six seven eight nine ten eleven twelve twenty thirty forty fifty hundred hundreds
thousand thousands million millions billion dozen half once twice single double first last
""".split())

# Calendar words: never topical for token relevance, but a list of months is a coherent group for
# the Patchscope scale grader (Prompt 21 excludes only function words, punctuation and affixes).
CALENDAR_WORDS = frozenset("""january february march april may june july august september october november december
monday tuesday wednesday thursday friday saturday sunday""".split())

# Bare suffixes and prefixes that carry no meaning of their own (Prompt 15 / Prompt 21).
AFFIXES = frozenset("""
ing ings ion ions ity ities ly ness ment ments ism isms ist ists ers er ed es est ate ates ated ating ite ites ine
ines ous ive ives al ic ics ical able ible ful less ize ise ized ised izing ising ance ence ant ent ary ory
ship hood dom ward wards tion tions sion sions ation ations ology ologist ance ances ency ities ial ian ians
pre pro con com dis mis non sub super inter anti auto semi multi over under re un
""".split())

_NUMBER = re.compile(r"^[-+]?[\d.,/:%]+(?:st|nd|rd|th|s|k|m|x)?$", re.IGNORECASE)
_ROMAN = re.compile(r"^(?=[ivxlcdm]+$)m*(c[md]|d?c{0,3})(x[cl]|l?x{0,3})(i[xv]|v?i{0,3})$", re.IGNORECASE)
_TEMPLATE = re.compile(r"^(?:<\|?[^<>]*\|?>|\[/?[A-Z_]+\]|</?s>|<unk>|<pad>|<eos>|<bos>|<mask>)$")
_CHAT_WORDS = frozenset("""user users assistant assistants system im_start im_end endoftext eot_id start_header_id
end_header_id begin_of_text end_of_text bos eos pad unk inst sys human ai bot chatbot""".split())


def clean_token(tok: str) -> str:
    """A token as a word: tokenizer whitespace markers and surrounding punctuation removed."""
    return tok.replace("Ġ", " ").replace("▁", " ").replace("Ċ", "\n").strip().strip(".,;:!?\"'()[]{}").strip()


def is_wordlike(tok: str) -> bool:
    w = clean_token(tok)
    return bool(WORD.fullmatch(w)) and len(w) >= 3 and w.lower() not in STOPWORDS


def is_number(tok: str) -> bool:
    """A bare number (digits, decimals, ordinals like "3rd", roman numerals up to a few letters)."""
    w = clean_token(tok)
    if not w:
        return False
    if _NUMBER.match(w) and any(c.isdigit() for c in w):
        return True
    return len(w) <= 4 and w.isupper() and bool(_ROMAN.match(w)) and w.lower() not in ("mix", "dim", "mid")


def is_template_token(tok: str) -> bool:
    """A chat/template control token (``<|im_start|>``, ``</s>``, ``[INST]``) or a chat role word."""
    raw = tok.strip()
    if _TEMPLATE.match(raw):
        return True
    w = clean_token(tok).lower().strip("<>|_")
    return w in _CHAT_WORDS


def word_stems(word: str) -> list[str]:
    """``word`` and the stems its regular English inflections could come from (lower-case):
    "adding" -> "add", "minutes" -> "minute", "stopped" -> "stop", "quickly" -> "quick"."""
    w = word.lower()
    out = [w]
    for suf, repl in (("ies", "y"), ("es", ""), ("s", ""), ("ied", "y"), ("ed", ""), ("ed", "e"), ("ing", ""),
                      ("ing", "e"), ("ly", ""), ("er", ""), ("est", "")):
        if w.endswith(suf) and len(w) - len(suf) >= 3:
            stem = w[: len(w) - len(suf)] + repl
            out.append(stem)
            if suf in ("ed", "ing") and len(stem) >= 4 and stem[-1] == stem[-2] and stem[-1] not in "aeiouls":
                out.append(stem[:-1])  # stopped -> stop, but not "added" -> "ad"
    return out


def is_generic(word: str, *, calendar: bool = True) -> bool:
    """True for words that never name a topic: stopwords, :data:`GENERIC_WORDS` and their regular
    inflections ("adding", "minutes", "standards"), number words, chat roles, and (``calendar``)
    month and weekday names."""
    w = clean_token(word).lower()
    if not w:
        return True
    if w in STOPWORDS or w in GENERIC_WORDS or w in _CHAT_WORDS or (calendar and w in CALENDAR_WORDS):
        return True
    return any(s in GENERIC_WORDS for s in word_stems(w)[1:])


def embedder_lexicon(name: str = DEFAULT_EMBEDDER) -> frozenset[str]:
    """Whole words known to the embedding model's tokenizer (e.g. BERT WordPiece vocabulary).

    Used to tell real words ("cake", "vanilla") from word fragments ("landsl", "ceram") that a
    language model's BPE vocabulary is full of; empty if the tokenizer exposes no vocabulary.
    """
    return _lexicon(name)


@lru_cache(maxsize=4)
def _lexicon(name: str) -> frozenset[str]:
    from ..models.embedder import get_embedder

    vocab = getattr(get_embedder(name).tokenizer, "vocab", None) or {}
    return frozenset(w for w in vocab if w.isalpha() and len(w) >= 3)


@lru_cache(maxsize=4)
def _common_direction(name: str) -> "np.ndarray":
    """Mean embedding of ~800 ordinary words (every 6th whole word among the embedder tokenizer's
    frequent vocabulary, or the generic-word list when it has none)."""
    import numpy as np

    from ..models.embedder import embed, get_embedder

    vocab = getattr(get_embedder(name).tokenizer, "vocab", None) or {}
    words = sorted((w for w in vocab if w.isalpha() and len(w) >= 3), key=lambda w: vocab[w])
    ref = words[200:5200:6] if len(words) >= 1000 else sorted(GENERIC_WORDS)
    return np.asarray(embed(ref, name).mean(0))


def word_vectors(words: "list[str]", name: str = DEFAULT_EMBEDDER) -> "np.ndarray":
    """Unit word embeddings with the direction all words share removed ("all-but-the-top").

    Single-word sentence embeddings share a large common component: unrelated words such as
    "government" and "album" have cosine ~0.3, about as much as related ones. Subtracting the mean
    embedding of ordinary words first brings unrelated pairs to ~0 (97th percentile ≈ 0.18) while
    related words stay apart from them (baking words ≈ 0.3, month names ≈ 0.4).
    """
    import numpy as np

    from ..models.embedder import embed

    if not words:
        return np.zeros((0, 1), dtype=np.float32)
    cache = _WORD_VECTORS.setdefault(name, {})
    todo = list(dict.fromkeys(w for w in words if w not in cache))
    if todo:
        x = embed(todo, name) - _common_direction(name)
        for w, v in zip(todo, x / (np.linalg.norm(x, axis=1, keepdims=True) + 1e-9)):
            cache[w] = v
    return np.stack([cache[w] for w in words])


_WORD_VECTORS: dict[str, dict[str, "np.ndarray"]] = {}  # embedder -> word -> centred unit vector (no eviction:
# Patchscope lists draw on a few thousand distinct words)


@lru_cache(maxsize=65536)
def word_zipf(word: str) -> float:
    """How common ``word`` is in ordinary English: the Zipf frequency of the ``wordfreq`` package
    (log10 of occurrences per billion words: "the" 7.7, "home" 5.8, "cake" 4.5, "kiln" 3.1, an unseen
    word 0). Offline: the package ships its frequency lists."""
    from wordfreq import zipf_frequency

    return float(zipf_frequency(clean_token(word).lower(), "en"))
