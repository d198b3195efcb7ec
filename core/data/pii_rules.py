"""The built-in PII recognizers of :mod:`core.data.pii`: regex patterns with cheap pre-checks
and validators (Luhn for cards, mod-97 for IBANs, layout checks for SSNs and phones)."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

PII_KINDS: tuple[str, ...] = (
    "EMAIL",
    "PHONE",
    "IPV4",
    "IPV6",
    "CREDIT_CARD",
    "US_SSN",
    "IBAN",
    "AWS_ACCESS_KEY",
    "BEARER_TOKEN",
    "API_KEY",
)


@dataclass(frozen=True, slots=True)
class PiiSpan:
    """A half-open character range ``text[start:end]`` holding PII of ``kind``."""

    start: int
    end: int
    kind: str


class Recognizer(Protocol):
    """Anything that finds PII spans in a text; spans may overlap, ``PiiRedactor`` resolves them."""

    # Read-only so frozen dataclasses (RegexRecognizer) satisfy the protocol for type checkers.
    @property
    def name(self) -> str: ...

    def find(self, text: str) -> Iterable[PiiSpan]: ...


def _always(text: str) -> bool:
    return True


@dataclass(frozen=True)
class PatternRule:
    """One regex of a recognizer, plus the checks that make a match count.

    ``group`` is the regex group holding the sensitive value (0: the whole match), so a rule
    can match ``api_key=...`` and redact only the value. ``precheck`` runs once per text and
    skips the regex when the text cannot contain a match. With ``shrink``, the value cut back
    at each separator (" ", "-", ".") is a candidate too: a CVV after a card or a word after an
    IBAN then no longer hides the number, and a phone number that ran on into a following SSN
    still has a shorter candidate left once the SSN wins the overlap.
    """

    pattern: re.Pattern[str]
    validate: Callable[[str], bool] = _always
    group: int = 0
    precheck: Callable[[str], bool] = _always
    shrink: bool = False

    def spans(self, text: str, kind: str) -> list[PiiSpan]:
        """Valid candidates; they may overlap, ``PiiRedactor`` resolves them."""
        if not self.precheck(text):
            return []
        found = []
        match = self.pattern.search(text)
        while match:
            start = match.start(self.group)
            ends = [start + len(value) for value in self._valid_values(match.group(self.group))]
            found += [PiiSpan(start, end, kind) for end in ends]
            # Not finditer: every start position gets its own candidate, so a match that fails
            # validation or loses an overlap cannot hide one starting inside it: in
            # "2001:db8::1 (555) 123-4567" the phone "1 (555) 123-4567" loses to the IPv6, and
            # "(555) 123-4567" must still be found. The look-behinds keep the extra scans cheap.
            match = self.pattern.search(text, match.start() + 1)
        return found

    def _valid_values(self, value: str) -> list[str]:
        candidates = [value]
        while self.shrink and (cut := max(map(value.rfind, " -."))) > 0:
            value = value[:cut]
            candidates.append(value)
        return [candidate for candidate in candidates if self.validate(candidate)]


@dataclass(frozen=True)
class RegexRecognizer:
    """Recognizer built from regex rules; ``name`` is also the kind of the spans it reports."""

    name: str
    rules: tuple[PatternRule, ...]

    def find(self, text: str) -> list[PiiSpan]:
        found: list[PiiSpan] = []
        for rule in self.rules:
            found.extend(rule.spans(text, self.name))
        return found


# --- cheap pre-checks: most documents hold no PII, so skip regexes that cannot match -----------

_SHAPE = bytes.maketrans(b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ", b"0" * 10 + b"A" * 26)


def _shape(text: str) -> bytes:
    """``text`` as UTF-8 with ASCII digits as b"0" and uppercase letters as b"A".

    Substring tests on the shape ("00-00-0000" for an SSN) rule most texts out in about 2 us
    per KB. Bytes, because ``str.translate`` takes ~120 us per KB on non-ASCII text.
    """
    return text.encode("utf-8", "surrogatepass").translate(_SHAPE)


def _shape_has(*needles: bytes) -> Callable[[str], bool]:
    def check(text: str) -> bool:
        shape = _shape(text)
        return any(needle in shape for needle in needles)

    return check


# Bytes regex over the lower-cased text: a key name the assignment regex below could match.
_KEY_NAME_HINT = re.compile(rb"api[_-]?key|secret|(?:access|auth)[_-]?token")


def _may_hold_key_assignment(text: str) -> bool:
    lowered = text.encode("utf-8", "surrogatepass").lower()
    # Plain substring tests first: they are 10x cheaper than the regex and rule out most texts.
    has_word = b"key" in lowered or b"token" in lowered or b"secret" in lowered
    return has_word and _KEY_NAME_HINT.search(lowered) is not None


# --- validators --------------------------------------------------------------------------------

_DIGIT = re.compile(r"\d", re.ASCII)
_LETTER = re.compile(r"[A-Za-z]")


def _looks_random(value: str) -> bool:
    # Real keys and tokens mix letters and digits; words or plain numbers after "Bearer" or
    # "api_key:" ("settings.API_KEY", an account number) do not.
    return _DIGIT.search(value) is not None and _LETTER.search(value) is not None


def _is_phone(value: str) -> bool:
    return 7 <= sum(char.isdigit() for char in value) <= 15


def _is_ipv4(value: str) -> bool:
    return all(int(octet) <= 255 and octet == str(int(octet)) for octet in value.split("."))


def _is_ipv6(value: str) -> bool:
    try:
        ipaddress.IPv6Address(value)
    except ValueError:
        return False
    groups = [group for group in value.split(":") if group]
    # "::", "::1" and Python slices such as "a[1::2]" parse as addresses; real addresses in text
    # have two or more groups, one of them 3+ hex digits ("fe80::1", "2001:db8::").
    return len(groups) >= 2 and max(map(len, groups)) >= 3


def _luhn_ok(digits: str) -> bool:
    total = 0
    for position, char in enumerate(reversed(digits)):
        digit = ord(char) - 48
        if position % 2:
            digit = digit * 2 - 9 if digit > 4 else digit * 2
        total += digit
    return total % 10 == 0


def _is_card(value: str) -> bool:
    digits = value.replace(" ", "").replace("-", "")
    # Issuer numbers start with 2-6 (Mastercard, Visa, Amex, Discover, JCB, Diners); leaving out
    # 0/1/7-9 keeps millisecond timestamps and other long ids that happen to pass Luhn.
    return 13 <= len(digits) <= 19 and digits[0] in "23456" and _luhn_ok(digits)


def _is_ssn(value: str) -> bool:
    # Area 000, 666 and 900-999, group 00 and serial 0000 are never issued.
    area, group, serial = value[:3], value[4:6], value[7:]
    return area not in ("000", "666") and area[0] != "9" and group != "00" and serial != "0000"


def _is_iban(value: str) -> bool:
    compact = value.replace(" ", "")
    if not 15 <= len(compact) <= 34:
        return False
    rearranged = compact[4:] + compact[:4]
    return int("".join(str(int(char, 36)) for char in rearranged)) % 97 == 1


# --- patterns ----------------------------------------------------------------------------------
# Speed: each pattern starts with a literal or a character class and checks the boundary before
# it with a look-behind placed after that first character. The regex engine then scans for the
# first character in C; a leading look-behind would be tried at every position, 3-5x slower.
# Numbers must not sit inside longer numbers: the look-arounds reject neighbouring word
# characters and "." or "-" next to a digit, so versions, dates and ids stay untouched. Both
# sides reject the same separators, which keeps redaction idempotent.


def _rx(pattern: str, flags: int = 0) -> re.Pattern[str]:
    return re.compile(pattern, re.ASCII | flags)


_NUMBER_END = r"(?![\w-]|\.\d)"
_EMAIL = _rx(
    r"[A-Za-z0-9._%+-](?<![\w.%+-].)[A-Za-z0-9._%+-]*@"
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,63}(?![\w-])"
)
# US layouts with one separator style: (555) 123-4567, 555-123-4567, 555.123.4567,
# 1-555-123-4567 and 1 (555) 123-4567.
_PHONE_US = _rx(
    r"[(\d](?<![\w+.-][(\d])(?:(?<=\()\d{3}\) ?\d{3}[ .-]\d{4}|(?<=\d)\d\d([ .-])\d{3}\1\d{4}"
    r"|(?<=1)[ .-]?(?:\(\d{3}\) ?\d{3}[ .-]\d{4}|\d{3}([ .-])\d{3}\2\d{4}))" + _NUMBER_END
)
# International: "+" country code, then groups split by space, dot, dash or "(0)"-style parts.
_PHONE_INTL = _rx(r"\+(?<![\w+]\+)\d{1,15}(?:(?:[ .-]?\(\d{1,4}\) ?|[ .-])\d{1,15}){0,6}(?!\w)")
_IPV4 = _rx(r"\d(?<![\w.]\d)\d{0,2}(?:\.\d{1,3}){3}(?![\w]|\.\d)")
# Hint before the IPv6 regex, which cannot start with a plain character: two colons with only
# hex digits between them ("::", ":db8:", ":30:"), which prose and most code lack.
_IPV6_HINT = _rx(r":[0-9A-Fa-f]{0,4}:")
# Candidates only (2-7 colons, optional IPv4 tail, no lone trailing ":"); ipaddress decides.
_IPV6 = _rx(
    r"(?<![\w:.])[0-9A-Fa-f]{0,4}(?::[0-9A-Fa-f]{0,4}){2,7}(?:(?:\.\d{1,3}){3})?"
    r"(?:(?<=[0-9A-Fa-f])|(?<=::))(?!\w|:[\w:]|\.\d)"
)
# 4-4-4-4(-3) and 4-6-5 (Amex) groups with one separator style, or 13-19 plain digits; not
# right after an IBAN's "DE89 " head, where digit groups belong to an (invalid) IBAN.
_CARD = _rx(
    r"\d(?<![\w+.-]\d)(?<!\b[A-Z]{2}\d\d \d)(?:\d{3}([ -])\d{4}\1\d{4}\1\d{1,4}(?:\1\d{1,3})?"
    r"|\d{3}([ -])\d{6}\2\d{4,5}|\d{12,18})" + _NUMBER_END
)
_SSN = _rx(r"\d(?<![\w+.-]\d)\d\d([ -])\d\d\1\d{4}" + _NUMBER_END)
_IBAN = _rx(
    r"[A-Z](?<![A-Za-z0-9][A-Z])[A-Z]\d\d(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,4})?"
    r"(?![A-Za-z0-9])"
)
_AWS_KEY = _rx(r"A(?<![A-Za-z0-9]A)(?:KIA|SIA)[A-Z0-9]{16}(?![A-Za-z0-9])")
_BEARER = _rx(r"(?<![\w-])(?i:bearer)[ \t]+([A-Za-z0-9._~+/-]{15,}[A-Za-z0-9_~+/-]=*)")
_SK_KEY = _rx(r"sk-(?<![\w-]sk-)[A-Za-z0-9_-]{20,}")
_GITHUB_TOKEN = _rx(r"g(?<![\w-]g)(?:h[pousr]_[A-Za-z0-9]{20,}|ithub_pat_[A-Za-z0-9_]{20,})")
_SLACK_TOKEN = _rx(r"xox(?<![\w-]xox)[abp]-[A-Za-z0-9-]{10,}")
# The key name stays; group 1 is the value. Prefixes come free: "aws_secret_access_key" holds
# "secret_access_key", "OPENAI_API_KEY" holds "API_KEY".
_KEY_ASSIGNMENT = _rx(
    r"(?:api[_-]?key|secret[_-]?(?:access[_-]?)?key|access[_-]?token|auth[_-]?token"
    r"|client[_-]?secret)[\"']?[ \t]*[:=][ \t]*[\"']?([A-Za-z0-9_+/=.~-]{16,})",
    re.IGNORECASE,
)


_BUILT_IN: tuple[RegexRecognizer, ...] = (
    RegexRecognizer("EMAIL", (PatternRule(_EMAIL, precheck=lambda t: "@" in t),)),
    RegexRecognizer(
        "PHONE",
        (
            PatternRule(_PHONE_US, precheck=_shape_has(b"000-0000", b"000.0000", b"000 0000")),
            PatternRule(_PHONE_INTL, validate=_is_phone, shrink=True),
        ),
    ),
    RegexRecognizer(
        "IPV4",
        (PatternRule(_IPV4, validate=_is_ipv4, precheck=_shape_has(b".0.", b".00.", b".000.")),),
    ),
    RegexRecognizer(
        "IPV6",
        (
            PatternRule(
                _IPV6, validate=_is_ipv6, precheck=lambda t: _IPV6_HINT.search(t) is not None
            ),
        ),
    ),
    RegexRecognizer(
        "CREDIT_CARD",
        (
            PatternRule(
                _CARD,
                validate=_is_card,
                precheck=_shape_has(b"0000 0000", b"0000-0000", b"0" * 13),
                shrink=True,
            ),
        ),
    ),
    RegexRecognizer(
        "US_SSN",
        (PatternRule(_SSN, validate=_is_ssn, precheck=_shape_has(b"00-00-0000", b"00 00 0000")),),
    ),
    RegexRecognizer(
        "IBAN", (PatternRule(_IBAN, validate=_is_iban, precheck=_shape_has(b"AA00"), shrink=True),)
    ),
    RegexRecognizer(
        "AWS_ACCESS_KEY", (PatternRule(_AWS_KEY, precheck=lambda t: "AKIA" in t or "ASIA" in t),)
    ),
    RegexRecognizer(
        "BEARER_TOKEN",
        (
            PatternRule(
                _BEARER,
                validate=_looks_random,
                group=1,
                precheck=lambda t: "earer" in t or "EARER" in t,
            ),
        ),
    ),
    RegexRecognizer(
        "API_KEY",
        (
            PatternRule(_SK_KEY, validate=_looks_random, precheck=lambda t: "sk-" in t),
            PatternRule(_GITHUB_TOKEN, precheck=lambda t: "_" in t),
            PatternRule(_SLACK_TOKEN, precheck=lambda t: "xox" in t),
            PatternRule(
                _KEY_ASSIGNMENT, validate=_looks_random, group=1, precheck=_may_hold_key_assignment
            ),
        ),
    ),
)


def default_recognizers(kinds: Sequence[str] | None = None) -> list[Recognizer]:
    """Built-in recognizers for ``kinds`` (all of ``PII_KINDS`` when None)."""
    if kinds is None:
        return list(_BUILT_IN)
    if isinstance(kinds, str):
        raise TypeError(f"kinds must be a list of kind names such as [{kinds!r}], not a string")
    unknown = [kind for kind in kinds if kind not in PII_KINDS]
    if unknown:
        raise ValueError(
            f"unknown PII kind(s): {', '.join(unknown)}; valid kinds: {', '.join(PII_KINDS)}"
        )
    return [recognizer for recognizer in _BUILT_IN if recognizer.name in kinds]
