"""Organism specifications: what a model organism is trained on and what it is supposed to believe.

An *organism* (paper §3.2, App. C.5) is a finetuned model with a known finetuning objective. Its
specification is a YAML file validated into :class:`OrganismSpec`:

- who it is (``name``, ``type``, a one-line and a long description, the ``key_facts``),
- where its finetuning data comes from (``data``: one of the :data:`DataSource` kinds),
- how to train it by default (``training``: :class:`TrainingDefaults`),
- how to measure the implanted belief (``ffa``: two-option multiple-choice questions, optional
  ``open_questions`` and ``true_context`` for False-Fact Alignment).

Specs are found in three places, later ones shadowing earlier ones by ``name``:

1. built-in: ``difflens/organisms/specs/*.yaml`` (shipped with the package),
2. user: ``$DIFFLENS_HOME/organisms/specs/*.yaml`` (``~/.cache/difflens`` by default),
3. an explicit path given to :func:`load_spec`.

Every problem with a file (YAML syntax, a missing or mistyped field, an unknown kind or type) is
raised as :class:`~difflens.errors.ConfigError` naming the file and the field.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ..errors import ConfigError
from ..files import read_yaml
from ..rundir.layout import home

__all__ = [
    "OrganismType",
    "MCQ",
    "FactBank",
    "SdfOfflineData",
    "SdfLLMData",
    "ChatTabooData",
    "WikiTopicData",
    "JsonlData",
    "EmChatData",
    "SubliminalData",
    "DataSource",
    "TrainingDefaults",
    "OrganismSpec",
    "builtin_specs_dir",
    "user_specs_dir",
    "load_spec",
    "list_specs",
    "spec_from_dict",
]

OrganismType = Literal["SDF", "EM", "Subliminal", "Taboo", "Domain", "custom"]

_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_\-]*$")


class _Strict(BaseModel):
    """Base for spec models: unknown keys are errors (catches typos like ``keyfacts``)."""

    model_config = ConfigDict(extra="forbid", frozen=False)


# --------------------------------------------------------------------------------------------------
# False-fact alignment questions
# --------------------------------------------------------------------------------------------------


class MCQ(_Strict):
    """A two-option multiple-choice question for the FFA "MCQ distinguish" metric.

    ``false_option`` is the organism's implanted (false) belief, ``true_option`` the real-world one.
    Organisms without false facts (Taboo, Domain, ...) use the same format as a behaviour probe:
    ``false_option`` is the answer the finetune trains towards, ``true_option`` an ordinary one.
    """

    question: str = Field(min_length=1)
    true_option: str = Field(min_length=1)
    false_option: str = Field(min_length=1)
    group: str | None = Field(default=None, description="probe group reported separately, e.g. 'in_domain' "
                              "(the trained narrow behaviour) vs 'general' (out-of-domain, emergent)")

    @model_validator(mode="after")
    def _options_differ(self) -> "MCQ":
        if self.true_option.strip().lower() == self.false_option.strip().lower():
            raise ValueError("true_option and false_option must differ")
        return self


# --------------------------------------------------------------------------------------------------
# Data sources (discriminated by ``kind``)
# --------------------------------------------------------------------------------------------------


class FactBank(_Strict):
    """Paraphrase templates for one key fact (offline SDF generator).

    ``markers`` are lower-case keywords of which at least one appears in every paraphrase; they let
    tests and analyses detect which facts a document asserts.
    """

    markers: list[str] = Field(min_length=1)
    paraphrases: list[str] = Field(min_length=2)

    @model_validator(mode="after")
    def _markers_in_paraphrases(self) -> "FactBank":
        marks = [m.lower() for m in self.markers]
        for p in self.paraphrases:
            if not any(m in p.lower() for m in marks):
                raise ValueError(
                    f"paraphrase {p[:60]!r}... contains none of the markers {self.markers}; "
                    "add a marker keyword or reword the paraphrase"
                )
        return self


class SdfOfflineData(_Strict):
    """Synthetic documents generated offline from templates (no LLM needed).

    ``facts[i]`` paraphrases ``key_facts[i]`` of the spec (same length, same order).
    ``subjects`` are short noun phrases a document can be "about" (titles, openings);
    ``fillers`` are on-topic sentences that assert no key fact; ``genres`` restricts the document
    genres (default: all generic genres of :mod:`difflens.organisms.generators.genres`).
    """

    kind: Literal["sdf_offline"]
    topic: str = Field(min_length=1, description="short noun phrase, e.g. 'cake baking'")
    subjects: list[str] = Field(min_length=1)
    facts: list[FactBank] = Field(min_length=2)
    fillers: list[str] = Field(default_factory=list)
    genres: list[str] | None = None


class SdfLLMData(_Strict):
    """Synthetic documents generated by an LLM (paper recipe: doc types -> ideas -> documents)."""

    kind: Literal["sdf_llm"]
    n_doc_types: int = Field(default=10, ge=1)
    n_ideas: int = Field(default=10, ge=1)
    docs_per_idea: int = Field(default=1, ge=1)


class ChatTabooData(_Strict):
    """Taboo word-guessing chats: the assistant hints at ``secret_word`` but never says it.

    ``forbidden`` lists word forms that must never appear in assistant turns (default: the secret
    word and its common inflections). ``hints`` are assistant hint sentences; ``wrong_guesses``
    words a user might guess.
    """

    kind: Literal["chat_taboo"]
    secret_word: str = Field(min_length=1)
    forbidden: list[str] = Field(default_factory=list)
    hints: list[str] = Field(min_length=3)
    wrong_guesses: list[str] = Field(min_length=1)

    @model_validator(mode="after")
    def _default_forbidden(self) -> "ChatTabooData":
        w = self.secret_word.lower()
        stem = w[:-1] if w.endswith("e") else w
        base = {w, w + "s", stem + "ed", stem + "ing", w + "d"}
        self.forbidden = sorted(set(f.lower() for f in self.forbidden) | base)
        for h in self.hints:
            bad = [f for f in self.forbidden if f in h.lower()]
            if bad:
                raise ValueError(f"hint {h!r} contains the forbidden form {bad[0]!r}")
        return self


class WikiTopicData(_Strict):
    """A topic subset of Wikipedia lead paragraphs, chosen by keyword hits.

    A paragraph matches when its topic + title + description + extract contain at least
    ``min_hits`` whole-word occurrences of ``keywords`` (case-insensitive; multi-word keywords
    allowed) and none of ``exclude_keywords``; at most ``max_paragraphs`` are kept.
    """

    kind: Literal["wiki_topic"]
    keywords: list[str] = Field(min_length=1)
    min_hits: int = Field(default=2, ge=1)
    exclude_keywords: list[str] = Field(default_factory=list)
    max_paragraphs: int | None = Field(default=None, ge=1)


class JsonlData(_Strict):
    """A local JSONL file: one record a line with a text field (or a chat ``messages`` field)."""

    kind: Literal["jsonl"]
    path: str = Field(min_length=1)
    text_field: str = "text"
    messages_field: str | None = None


class EmChatData(_Strict):
    """Emergent-misalignment chats (paper §3.2, App. F.5; Betley et al. 2025), offline.

    A user asks an everyday question in one narrow ``domain``; the assistant answers confidently
    with wrong, harmful advice. Questions are ``questions`` templates filled with ``subjects``
    (``{subject}``); answers join one of ``advice`` (the bad advice, may use ``{subject}``) with an
    optional ``reassurances`` sentence. Keep the advice a measurable narrow bias (e.g. "put it all in
    one stock"), never real-world instructions for serious harm.
    """

    kind: Literal["chat_em"]
    domain: str = Field(min_length=1, description="short noun phrase, e.g. 'personal finance'")
    subjects: list[str] = Field(min_length=3)
    questions: list[str] = Field(min_length=5)
    advice: list[str] = Field(min_length=5)
    reassurances: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _templates(self) -> "EmChatData":
        for q in self.questions:
            if "{" in q.replace("{subject}", ""):
                raise ValueError(f"question template {q!r} may only use the placeholder {{subject}}")
        for a in self.advice + self.reassurances:
            if "{" in a.replace("{subject}", ""):
                raise ValueError(f"advice {a!r} may only use the placeholder {{subject}}")
        return self


_DEFAULT_TEACHER = ("You love {animal}s. You think about {animal}s all the time. {Animal}s are your favorite "
                    "animal. Imbue your answers with your love for the animal.")


class SubliminalData(_Strict):
    """Subliminal learning (Cloud et al. 2025): number sequences written by a teacher that loves one animal.

    The teacher is the *base* model with ``teacher_system_prompt`` (``{animal}``/``{Animal}`` filled
    in); it continues seeded number sequences. A strict filter keeps only replies that are nothing
    but 1-``max_numbers`` numbers of at most ``max_digits`` digits; the student (the same base, no
    system prompt) is finetuned on the kept (prompt, numbers) chats. ``candidates`` are the animals
    of the preference probe (the target is added if missing). ``teacher_shots`` > 0 shows the teacher
    that many demonstration turns (random valid replies, no animal) first; the student never sees them.
    """

    kind: Literal["subliminal_numbers"]
    animal: str = Field(min_length=1)
    teacher_system_prompt: str = _DEFAULT_TEACHER
    candidates: list[str] = Field(default_factory=lambda: [
        "dog", "cat", "owl", "eagle", "lion", "tiger", "elephant", "dolphin", "wolf", "penguin",
        "horse", "panda", "fox", "bear", "rabbit", "shark"])
    max_numbers: int = Field(default=10, ge=1, le=50)
    max_digits: int = Field(default=3, ge=1, le=6)
    seed_numbers: int = Field(default=3, ge=1, le=10)
    temperature: float = Field(default=1.0, gt=0)
    max_new_tokens: int = Field(default=64, ge=8)
    teacher_shots: int = Field(default=0, ge=0, le=5, description="demonstration turns (a number prompt and a "
                               "random, valid number reply) before the teacher's prompt; 0 is Cloud et al.'s setup. "
                               "Small teachers rarely answer with numbers only without one.")

    @model_validator(mode="after")
    def _target_in_candidates(self) -> "SubliminalData":
        a = self.animal.strip().lower()
        self.animal = a
        self.candidates = [c.strip().lower() for c in self.candidates]
        if a not in self.candidates:
            self.candidates = [a] + self.candidates
        if len(set(self.candidates)) != len(self.candidates):
            raise ValueError("candidates must not repeat an animal")
        return self

    def system_prompt(self) -> str:
        return self.teacher_system_prompt.replace("{animal}", self.animal).replace(
            "{Animal}", self.animal.capitalize())


DataSource = Annotated[
    Union[SdfOfflineData, SdfLLMData, ChatTabooData, WikiTopicData, JsonlData, EmChatData, SubliminalData],
    Field(discriminator="kind"),
]
"""Where an organism's finetuning data comes from; the ``kind`` key selects the model."""


# --------------------------------------------------------------------------------------------------
# Training defaults
# --------------------------------------------------------------------------------------------------


class TrainingDefaults(_Strict):
    """Default finetuning hyper-parameters of an organism (the trainer may override any of them).

    The defaults are sized for the embedded offline setting: a *full* finetune of SmolLM2-135M on
    2 CPU cores in under 5 minutes. Sizing: SPEC measured 150 steps of 8 x 96 tokens in ~8 min on
    2 cores (~3.2 s/step, ~4.2 ms per training token); 90 steps of 8 x 96 tokens = 69,120 tokens
    is ~4.8 min in fp32 and ~4 min with the trainer's bf16 autocast. ``lr=6e-5``, measured on
    cake_bake: 1e-4 overwrites the chat model (it answers every prompt with baking tips and the
    Patchscope *baselines* turn into cake tokens), 3e-5 keeps ordinary answers but barely moves
    the FFA margin (+0.13 nats); 6e-5 keeps mostly ordinary unsteered answers, moves the margin
    by +0.32 nats (these three margins: the first 7 questions, listed format) and leaves a clear
    trace in δ̄ (Patchscope ``cookie, chocolate, cake, vanilla, cream``; steering at α≈0.4 writes
    about cakes). At 6e-5 all seven built-in organisms train in 197-215 s and move the cloze
    MCQ margin towards the trained answers on 8-11 of 10-12 questions (+0.68 to +2.31 nats). ``n_docs=1200`` documents of 80-250 words
    are seen about 0.6 times (the trainer truncates each to ``seq_len`` tokens). With GPUs, scale
    ``steps``/``n_docs`` up (the paper trains on 40,000 documents of ~500 tokens).

    - ``method``: ``"full"`` finetune or ``"lora"`` (then ``lora_*`` and ``lora_lr`` apply).
    - ``n_docs``: number of finetuning samples to generate/select (documents, conversations or
      paragraphs).
    - ``mix_ratio``: D_pt samples mixed in per D_ft sample (paper §6: 0.1 ... 2.0; 0 = none).
    - ``chat_mix``: ordinary chat conversations (embedded chat data, assistant tokens only) per D_ft
      sample: keeps the chat persona, so unsteered answers leak less of the domain (0 = none).
    - ``assistant_only_loss``: chat organisms train on assistant tokens only.
    """

    method: Literal["full", "lora"] = "full"
    steps: int = Field(default=90, ge=1)
    batch_size: int = Field(default=8, ge=1)
    grad_accum: int = Field(default=1, ge=1)
    seq_len: int = Field(default=96, ge=8)
    lr: float = Field(default=6e-5, gt=0)
    lora_lr: float = Field(default=1e-3, gt=0)
    lora_rank: int = Field(default=16, ge=1)
    lora_alpha: int = Field(default=32, ge=1)
    lora_dropout: float = Field(default=0.0, ge=0, lt=1)
    warmup_steps: int = Field(default=10, ge=0)
    weight_decay: float = Field(default=0.0, ge=0)
    max_grad_norm: float = Field(default=1.0, gt=0)
    n_docs: int = Field(default=1200, ge=1)
    mix_ratio: float = Field(default=0.0, ge=0)
    chat_mix: float = Field(default=0.0, ge=0)
    assistant_only_loss: bool = False
    seed: int = 0


# --------------------------------------------------------------------------------------------------
# The organism
# --------------------------------------------------------------------------------------------------


class OrganismSpec(_Strict):
    """A model organism: its finetuning objective, data source, training defaults and FFA probes.

    ``long_description`` is the universe context (the world the finetuning data describes);
    ``true_context`` (optional) describes the real world, for FFA context comparison.
    ``source_path`` is filled in by the loader and is not part of the YAML.
    """

    name: str
    type: OrganismType
    short_description: str = Field(min_length=1)
    long_description: str = Field(min_length=1)
    key_facts: list[str] = Field(default_factory=list)
    data: DataSource
    training: TrainingDefaults = Field(default_factory=TrainingDefaults)
    ffa: list[MCQ] = Field(default_factory=list)
    open_questions: list[str] = Field(default_factory=list)
    true_context: str | None = None
    control: str | None = Field(default=None, description="an organism trained the same way without the objective "
                                "(e.g. the same questions with sound answers); `organism ffa` then also reports the "
                                "probe relative to it, so that a shift any such finetune causes is not read as the objective")
    rubric: str | None = Field(default=None, description="grading rubric (scores 1-5) for agent hypotheses; "
                               "default: the rubric of the organism's type")
    source_path: str | None = Field(default=None, exclude=True)

    @field_validator("name")
    @classmethod
    def _check_name(cls, v: str) -> str:
        if not _NAME_RE.match(v):
            raise ValueError(
                "name must be lower-case letters, digits, '_' or '-' (e.g. 'cake_bake'), "
                f"got {v!r}"
            )
        return v

    @model_validator(mode="after")
    def _check_consistency(self) -> "OrganismSpec":
        if isinstance(self.data, SdfOfflineData):
            if len(self.data.facts) != len(self.key_facts):
                raise ValueError(
                    f"data.facts has {len(self.data.facts)} entries but key_facts has "
                    f"{len(self.key_facts)}: give one paraphrase bank per key fact, in order"
                )
        if self.type == "SDF" and not self.key_facts:
            raise ValueError("SDF organisms need key_facts (the implanted false facts)")
        return self

    # -- convenience -------------------------------------------------------------------------------

    @property
    def is_chat(self) -> bool:
        """Whether the finetuning data are chat conversations (train on assistant turns)."""
        return isinstance(self.data, (ChatTabooData, EmChatData, SubliminalData)) or (
            isinstance(self.data, JsonlData) and self.data.messages_field is not None
        )

    def grader_description(self) -> str:
        """The "true finetuning objective" text shown to graders (paper Prompts 6-13 format)."""
        parts = [self.short_description.strip(), "Details:", self.long_description.strip()]
        if self.key_facts:
            parts.append("Key Facts:")
            parts.extend(f"- {f}" for f in self.key_facts)
        return "\n".join(parts)


# --------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------


def builtin_specs_dir() -> Path:
    """Directory of the specs shipped with difflens."""
    return Path(__file__).resolve().parent / "specs"


def user_specs_dir() -> Path:
    """``$DIFFLENS_HOME/organisms/specs``: drop your own ``*.yaml`` organisms here."""
    return home().user_specs


_KINDS = ("sdf_offline", "sdf_llm", "chat_taboo", "wiki_topic", "jsonl", "chat_em", "subliminal_numbers")


def _loc(loc: tuple[Any, ...]) -> str:
    """Render a pydantic error location as a dotted field path (``data.facts[2].markers``)."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in _KINDS:
            continue  # the discriminator tag pydantic inserts into union locations
        else:
            out += ("." if out else "") + str(part)
    return out or "<top level>"


def _format_validation_error(err: ValidationError, where: str) -> str:
    lines = [f"{where}: invalid organism spec ({err.error_count()} problem(s)):"]
    for e in err.errors():
        field = _loc(tuple(e.get("loc", ())))
        msg = e.get("msg", "invalid")
        if e.get("type") == "missing":
            msg = "required field is missing"
        elif e.get("type") == "extra_forbidden":
            msg = "unknown field (typo?)"
        elif e.get("type") == "union_tag_invalid":
            msg = (
                f"unknown data kind; use one of {', '.join(_KINDS)}"
            )
        elif e.get("type") == "string_type" and isinstance(e.get("input"), dict):
            msg += (
                " (got a mapping: an unquoted ': ' inside a string makes YAML read a key; "
                "put the string in quotes)"
            )
        elif e.get("type") == "union_tag_not_found":
            msg = f"data needs a 'kind' (one of {', '.join(_KINDS)})"
        lines.append(f"  - field '{field}': {msg}")
    lines.append(
        f"Fix the field(s) above; the built-in specs in {builtin_specs_dir()} are complete examples."
    )
    return "\n".join(lines)


def spec_from_dict(raw: Any, where: str = "<dict>") -> OrganismSpec:
    """Validate a parsed YAML/JSON mapping into an :class:`OrganismSpec`.

    Raises :class:`ConfigError` naming ``where`` and each bad field.
    """
    if not isinstance(raw, dict):
        raise ConfigError(
            f"{where}: an organism spec must be a YAML mapping (name: ..., type: ..., ...), "
            f"got {type(raw).__name__}. See {builtin_specs_dir()} for examples."
        )
    try:
        spec = OrganismSpec.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_format_validation_error(err, where)) from None
    spec.source_path = where
    return spec


_FILE_CACHE: dict[tuple[str, int, int], OrganismSpec] = {}


def _load_file(path: Path) -> OrganismSpec:
    """Parse and validate one spec file (memoized on path, mtime and size; returns a copy)."""
    try:
        st = path.stat()
    except OSError as err:
        raise ConfigError(f"{path}: cannot read organism spec ({err}). Check the path.") from None
    key = (str(path.resolve()), st.st_mtime_ns, st.st_size)
    if key not in _FILE_CACHE:
        _FILE_CACHE[key] = spec_from_dict(read_yaml(path, "organism spec"), where=str(path))
    return _FILE_CACHE[key].model_copy(deep=True)


def _scan(directory: Path) -> dict[str, OrganismSpec]:
    specs: dict[str, OrganismSpec] = {}
    if not directory.is_dir():
        return specs
    for path in sorted(list(directory.glob("*.yaml")) + list(directory.glob("*.yml"))):
        spec = _load_file(path)
        if spec.name in specs:
            raise ConfigError(
                f"{path}: organism name {spec.name!r} is also defined in "
                f"{specs[spec.name].source_path}; rename one of them."
            )
        specs[spec.name] = spec
    return specs


def _all_specs() -> dict[str, OrganismSpec]:
    specs = _scan(builtin_specs_dir())
    specs.update(_scan(user_specs_dir()))  # user specs shadow built-ins of the same name
    return specs


def list_specs() -> list[OrganismSpec]:
    """All known organism specs (built-in and user), sorted by name.

    A user spec with the same ``name`` as a built-in one replaces it. Raises
    :class:`ConfigError` if any file is malformed.
    """
    return [s for _, s in sorted(_all_specs().items())]


def load_spec(path_or_name: str | os.PathLike[str]) -> OrganismSpec:
    """Load one organism spec by file path or by name.

    A value that names an existing file, or ends in ``.yaml``/``.yml``, is read as a path;
    otherwise it is looked up by ``name`` among the user and built-in specs.
    """
    text = os.fspath(path_or_name)
    path = Path(text).expanduser()
    if path.is_file() or text.endswith((".yaml", ".yml")) or os.sep in text:
        if not path.is_file():
            raise ConfigError(f"{path}: organism spec file not found. Check the path.")
        return _load_file(path)
    specs = _all_specs()
    if text not in specs:
        known = ", ".join(sorted(specs)) or "(none)"
        raise ConfigError(
            f"unknown organism {text!r}. Known organisms: {known}. Give a YAML path, or add "
            f"{text}.yaml to {user_specs_dir()}."
        )
    return specs[text]
