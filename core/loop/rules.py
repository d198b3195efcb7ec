"""The quarantine rules of curation: what in a text marks it as an attack on the model.

Pure functions over strings. The rules read :func:`check_view` text, which undoes disguises
(fullwidth and homoglyph letters, zero-width characters, doubled spaces, defanged links).
``instruction`` (text aimed at the model: "ignore previous instructions", role tags, special
tokens) and ``link`` (URLs, shorteners, defanged domains) apply to answers and to what the
client wrote in a prompt (:func:`prompt_reason`); ``spam`` (repetition, shouting, oversize)
to answers only. :mod:`core.loop.curation` applies them.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

from core.data.text import clean_text, fold_confusables

# The rules read check_view() text: case-folded, single-spaced, homoglyphs folded, links
# un-defanged, so they are written in lower case with single spaces.
_VERB = r"(?:ignore|disregard|forget|override|bypass|neglect)"
_SCOPE = (
    r"(?:all|any|every|each|previous|prior|above|earlier|preceding|foregoing|former|original"
    r"|initial|old|existing|system|safety|your|my|the|these|those|of|given|other)"
)
# One of these must qualify the rules, so "ignore the instructions on the box" passes.
_STRONG = (
    r"(?:all|any|every|previous|prior|above|earlier|preceding|foregoing|former|original"
    r"|initial|system|safety|your)"
)
_RULES = (
    r"(?:instructions?|prompts?|rules|directions|directives|guidelines|guardrails|constraints"
    r"|restrictions|policies|filters|context|messages|programming|training|orders|commands)"
)
_PERSONA = (
    r"(?:dan|ai|assistant|chatbot|bot|model|llm|character|persona|unrestricted|unfiltered"
    r"|uncensored|jailbroken|evil|hacker)"
)
# Tokens a chat template or tokenizer gives a meaning: never legitimate in what a user wrote.
_SPECIAL_TOKEN = (
    r"<\|[^|\n]{0,40}\|>|\[/?inst\]|<</?sys>>"
    r"|</?(?:s|bos|eos|pad|unk|im_start|im_end|start_of_turn|end_of_turn)>"
)
_INSTRUCTION = re.compile(
    rf"\b{_VERB} (?:{_SCOPE} ){{0,3}}{_STRONG} (?:{_SCOPE} ){{0,2}}{_RULES}\b"
    r"|\b(?:ignore|disregard|forget) (?:everything|anything|all)"
    r"(?: (?:you (?:were|have been) told|that was said|i said))?"
    r" (?:above|before|prior|previously|earlier|so far)\b"
    r"|\b(?:ignore|disregard|forget) (?:everything|all) you (?:were|have been|are) told\b"
    r"|\b(?:ignore|disregard|forget) the (?:above|foregoing|preceding)\b"
    r"|\bdisregard (?:all |any |the )?(?:previous|prior|above|your) "
    r"|\b(?:new|updated|revised|real|actual|true|secret|hidden) (?:system )?"
    r"(?:instructions?|rules|prompt|directives?|orders) ?:"
    # Role changes name what the model is to become: "you are now set up" and "the hub can
    # act as a bridge" are product answers.
    rf"|\byou are (?:now|no longer) (?:an? |the |my )?{_PERSONA}\b|\byou are no longer bound\b"
    rf"|\b(?:act|behave|respond) as (?:an? |the |my )?(?:\w+ )?{_PERSONA}\b"
    r"|\b(?:act|behave|respond) as (?:if|though) you (?:are|were|had)\b"
    r"|\bpretend (?:to be|you are|that you are)\b|\brole-?play as\b"
    r"|\bsystem prompt|\bjailbr[eo]a?k|\b(?:developer|dan|god) mode\b|\bdo anything now\b"
    r"|\b(?:reveal|repeat|leak|print) your (?:\w+ )?(?:prompt|instructions)\b"
    rf"|{_SPECIAL_TOKEN}"
    r"|^ ?(?:system|assistant) ?:|^ ?#{2,} ?(?:system|instruction|response) ?:? ?$",
    re.MULTILINE,
)
_SHORTENER = (
    r"bit\.ly|t\.co|tinyurl\.com|goo\.gl|is\.gd|ow\.ly|rb\.gy|cutt\.ly|buff\.ly|tiny\.cc"
    r"|shorturl\.at|rebrand\.ly|t\.ly|s\.id|v\.gd"
)
# Common TLDs, and those link shorteners and spam favour. Names like "node.js" or "e.g." do
# not end in one; a real sentence rarely joins a word and a TLD with a dot and no space.
_TLD = (
    r"com|net|org|io|ru|cn|su|xyz|info|biz|ly|co|gl|gd|gy|me|cc|to|tk|gg|pw|ws|app|dev|link"
    r"|site|top|club|online|ai"
)
_LINK = re.compile(
    rf"\b[a-z][a-z0-9+.-]{{1,15}}://|\bwww\.|\bjavascript:|\b(?:{_SHORTENER})\b"
    rf"|\b[a-z0-9-]+\.(?:{_TLD})\b"
)
# Defanged links, back to the link they stand for. The spelled " dot " only before a TLD
# that is no English word ("a dot to the left" stays prose).
_WORDLESS_TLD = r"com|net|org|io|ru|cn|xyz|biz|ly|gl|gd|gy|tk|gg"
_DEFANG = (
    (re.compile(r" ?[\[({<] ?(?:\.|dot) ?[\])}>] ?"), "."),
    (re.compile(rf"(?<=[a-z0-9]) dot (?=(?:{_WORDLESS_TLD})\b)"), "."),
    (re.compile(r"[\[(]:[\])]"), ":"),
    (re.compile(r"\bhxxp"), "http"),
)
_SPACES = re.compile(r"[^\S\n]+")
_REPEAT = re.compile(r"(.)\1{9,}|(\b\w+\b)(\W+\2\b){4,}", re.IGNORECASE)


@dataclass(frozen=True)
class CurationConfig:
    """Thresholds of the quarantine rules."""

    max_chars: int = 2000
    max_caps_ratio: float = 0.6
    flood_min_items: int = 8
    flood_max_share: float = 0.4
    consensus_min_votes: int = 2


def check_view(text: str) -> str:
    """The text the quarantine rules read: what ingest stores, with its disguises taken off.

    First exactly ingest's ``clean_text`` (NFKC folds fullwidth letters, zero-width
    characters go, whitespace collapses), then what NFKC keeps: invisible format characters
    (soft hyphen, bidi controls) and combining marks are dropped, Cyrillic and Greek
    homoglyphs become Latin, case is folded, and defanged links ("evil[.]com", "evil dot com",
    "hxxp://") are restored. Only for checking: never stored or trained on.
    """
    text = unicodedata.normalize("NFKD", clean_text(text))
    text = "".join(c for c in text if unicodedata.category(c) not in ("Mn", "Cf"))
    text = _SPACES.sub(" ", fold_confusables(text).casefold())
    for pattern, plain in _DEFANG:
        text = pattern.sub(plain, text)
    return text


def _attack_reason(view: str) -> str | None:
    """``instruction`` or ``link`` when a check view carries one: the rules prompts get too."""
    if _INSTRUCTION.search(view):
        return "instruction"
    if _LINK.search(view):
        return "link"
    return None


def text_reason(answer: str, cfg: CurationConfig) -> str | None:
    """Why one correction's text is unfit to train on, or None.

    Attacks are looked for in :func:`check_view`; size and shouting are measured on the text
    as it would be trained on (``clean_text``), where case still shows.
    """
    view = check_view(answer)
    reason = _attack_reason(view)
    if reason:
        return reason
    clean = clean_text(answer)
    letters = [c for c in clean if c.isalpha()]
    shouting = len(letters) >= 12 and sum(c.isupper() for c in letters) / len(letters)
    if len(clean) > cfg.max_chars or _REPEAT.search(view) or shouting > cfg.max_caps_ratio:
        return "spam"
    if not view.strip():
        return "spam"
    return None


# The role headers of the chat templates served here, each with its end of turn: ChatML,
# Llama 3, and "<|user|>" (Zephyr style, and tests' tiny model). A prompt uses one template:
# another template's header inside it is something a client wrote.
_TEMPLATES = (
    (re.compile(r"<\|im_start\|>(system|user|assistant)\n"), re.compile(r"<\|im_end\|>\n?$")),
    (
        re.compile(r"<\|start_header_id\|>(system|user|assistant)<\|end_header_id\|>\n*"),
        re.compile(r"<\|eot_id\|>$"),
    ),
    (re.compile(r"<\|(system|user|assistant)\|>\n?"), re.compile(r"(?:<\|end\|>)?\n?$")),
)
_BOS = re.compile(r"^(?:<\|begin_of_text\|>|<s>)")


def client_text(prompt: str) -> str | None:
    """What the client wrote in a rendered prompt: its turns without the template around them.

    For events recorded before ``user_text`` was. A leading system turn is the template's
    (its default system prompt, or the client's own) and is left out; user and assistant turns
    are kept (a client writes assistant turns of a conversation too). A system turn after the
    first is what an injected "<|im_end|><|im_start|>system" looks like, and a real one cannot
    be told from it here: None, the prompt is not to be trained on. A prompt in no known
    template is all the client's.
    """
    body = _BOS.sub("", prompt)
    for header, end_of_turn in _TEMPLATES:
        heads = list(header.finditer(body))
        if heads and heads[0].start() == 0:
            return _client_turns(body, heads, end_of_turn)
    return prompt


def _client_turns(
    body: str, heads: list[re.Match[str]], end_of_turn: re.Pattern[str]
) -> str | None:
    """The user and assistant turns of a prompt split at ``heads``; None for a late system turn."""
    turns = [
        (head.group(1), end_of_turn.sub("", body[head.end() : nxt.start() if nxt else None]))
        for head, nxt in zip(heads, [*heads[1:], None], strict=True)
    ]
    if any(role == "system" for role, _ in turns[1:]):
        return None
    return "\n".join(text for role, text in turns if role != "system")


def prompt_reason(prompt: str, user_text: str | None) -> str | None:
    """Why a served prompt is unfit to train on (``instruction`` or ``link``), or None.

    ``user_text`` is what the client wrote; the rendered ``prompt`` adds the chat template,
    whose own special tokens are no attack. Without ``user_text`` the client's turns are cut
    out of the prompt (:func:`client_text`).
    """
    written = user_text if user_text is not None else client_text(prompt)
    if written is None:
        return "instruction"
    return _attack_reason(check_view(written))
