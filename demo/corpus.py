"""Write the demo's raw corpus with planted defects, and the ground truth that scores ingest.

    python -m demo.corpus --out /tmp/corpus --size-mb 5 --seed 0

Layout (paths and record ids in planted.json are relative to ``raw/``, the way the ingest
readers name records: ``docs/part-0000.jsonl@<byte offset>``, ``tickets/part-0000.parquet#<row>``):

    OUT/raw/docs/part-XXXX.jsonl       {"id", "source", "text"} lines, and the broken lines
    OUT/raw/tickets/part-XXXX.parquet  columns id, text: support tickets, most planted PII
    OUT/raw/notes/NN-<kind>.txt        one document per file
    OUT/planted.json                   PlantedTruth

The same seed and size always give byte-identical files.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import math
import random
import re
import string
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from demo import world

MB = 1_000_000
MIN_TARGET_BYTES = 100_000
_AVG_DOC_BYTES = 1_600  # measured average JSONL line; only used to scale the planted counts
_MAX_PART_BYTES = 8_000_000
_TICKET_SHARE = 0.2  # share of target_bytes spent on ticket text (Parquet compresses it)
_NOTE_KINDS = ("release_notes", "product_docs", "faq", "product_docs", "release_notes")
_PLAIN_KINDS = ("product_docs", "support_ticket", "release_notes", "faq")
_PLAIN_WEIGHTS = (45, 20, 15, 20)
PII_KINDS = (
    "EMAIL", "PHONE", "IPV4", "IPV6", "CREDIT_CARD", "US_SSN", "IBAN", "AWS_ACCESS_KEY",
    "BEARER_TOKEN", "API_KEY",
)  # fmt: skip
BROKEN_REASONS = ("invalid_json", "invalid_utf8", "missing_field", "not_text")
LOW_QUALITY_REASONS = ("too_short", "low_alpha", "repeated_lines")


@dataclass
class PlantedTruth:
    """What generate_corpus planted; ingest stages are scored against it."""

    documents: dict[str, int]  # readable documents by format: jsonl, parquet, txt, total
    exact_duplicates: list[list[str]]  # [original id, copy ids...]: equal after case/space fold
    near_duplicates: list[list[str]]  # [original id, copy ids...]: 5-shingle Jaccard >= 0.85
    pii: list[dict[str, str]]  # {"kind", "value", "doc_id"}, each value planted exactly once
    broken: list[dict[str, str]]  # {"file" (relative to raw/), "reason"}: unreadable lines
    low_quality: list[dict[str, str]]  # {"doc_id", "reason"}
    unicode_artifacts: list[str]  # ids of good docs holding ligatures, zero-width, controls...
    facts_corpus_coverage: dict[str, int]  # fact id -> distinct documents stating it
    record_ids: dict[str, str]  # planted doc id -> ingest record id ("docs/part-0000.jsonl@0")
    seed: int
    target_bytes: int
    total_bytes: int  # bytes written under raw/

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> PlantedTruth:
        return cls(**json.loads(text))


@dataclass(frozen=True)
class _Plan:
    """How many of each defect to plant: a few dozen at 5 MB, growing with the size."""

    exact_groups: int
    near_groups: int
    pii_tickets: int
    pii_docs: int
    low_quality_each: int
    broken_each: int
    unicode_docs: int

    @classmethod
    def for_size(cls, target_bytes: int) -> _Plan:
        docs = target_bytes // _AVG_DOC_BYTES
        pii = max(2 * len(PII_KINDS), docs // 30)
        return cls(
            exact_groups=max(3, docs // 80),
            near_groups=max(3, docs // 80),
            pii_tickets=pii - pii // 4,
            pii_docs=pii // 4,
            low_quality_each=max(3, docs // 500),
            broken_each=max(3, docs // 1000),
            unicode_docs=max(5, docs // 100),
        )


@dataclass
class _Line:
    data: bytes
    doc_id: str | None = None  # None for broken lines
    broken: str | None = None


def shingle_jaccard(a: str, b: str, n: int = 5) -> float:
    """Jaccard similarity of the lower-cased n-word shingles of two texts (as dedup sees them)."""
    sa, sb = _shingles(a, n), _shingles(b, n)
    return len(sa & sb) / len(sa | sb) if sa or sb else 1.0


def _shingles(text: str, n: int) -> set[tuple[str, ...]]:
    words = re.findall(r"\w+", text.lower())
    return {tuple(words[i : i + n]) for i in range(max(1, len(words) - n + 1))}


def _fold(text: str) -> str:
    return " ".join(text.casefold().split())


# --- PII values --------------------------------------------------------------------------------
_ALNUM = string.ascii_letters + string.digits
_UPPER_ALNUM = string.ascii_uppercase + string.digits
_FIRST = ("alex", "sam", "jordan", "casey", "morgan", "riley", "jamie", "robin", "avery", "quinn")
_LAST = ("rivera", "okafor", "lindqvist", "moreau", "tanaka", "kowalski", "haddad", "brennan")
_DOMAINS = ("example.com", "mailbox.example", "postbox.example.org", "inbox.test")


def _rand(rng: random.Random, alphabet: str, n: int) -> str:
    return "".join(rng.choices(alphabet, k=n))


def _email(rng: random.Random) -> str:
    user = f"{rng.choice(_FIRST)}.{rng.choice(_LAST)}{rng.randint(1, 999)}"
    return f"{user}@{rng.choice(_DOMAINS)}"


def _phone(rng: random.Random) -> str:
    area, mid, last = rng.randint(201, 989), rng.randint(200, 999), rng.randint(0, 9999)
    return rng.choice(
        (
            f"({area}) {mid}-{last:04d}",
            f"+1 {area}-{mid}-{last:04d}",
            f"+44 20 {rng.randint(7000, 7999)} {last:04d}",
        )
    )


def _ipv4(rng: random.Random) -> str:
    prefix = rng.choice(("192.168", f"10.{rng.randint(0, 255)}", f"172.{rng.randint(16, 31)}"))
    return f"{prefix}.{rng.randint(0, 255)}.{rng.randint(1, 254)}"


def _ipv6(rng: random.Random) -> str:
    groups = [f"{rng.randint(0x100, 0xFFFF):x}" for _ in range(8)]
    if rng.random() < 0.5:
        return "2001:db8:" + ":".join(groups[:2]) + "::" + ":".join(groups[2:4])
    return ":".join(groups)


def _luhn_digit(payload: str) -> str:
    total = 0
    for i, char in enumerate(reversed(payload)):
        digit = int(char) * (2 if i % 2 == 0 else 1)  # the check digit will sit to the right
        total += digit - 9 if digit > 9 else digit
    return str(-total % 10)


def _credit_card(rng: random.Random) -> str:
    payload = rng.choice(("4", f"5{rng.randint(1, 5)}")) + _rand(rng, string.digits, 15)
    number = payload[:15] + _luhn_digit(payload[:15])
    sep = rng.choice((" ", "-", ""))
    return sep.join(number[i : i + 4] for i in range(0, 16, 4))


def _ssn(rng: random.Random) -> str:
    return f"{rng.randint(1, 665):03d}-{rng.randint(1, 99):02d}-{rng.randint(1, 9999):04d}"


def _iban(rng: random.Random) -> str:
    if rng.random() < 0.5:
        country, bban = "DE", _rand(rng, string.digits, 18)
    else:
        country, bban = "GB", _rand(rng, string.ascii_uppercase, 4) + _rand(rng, string.digits, 14)
    check = 98 - int("".join(str(int(c, 36)) for c in bban + country + "00")) % 97
    iban = f"{country}{check:02d}{bban}"
    return " ".join(iban[i : i + 4] for i in range(0, len(iban), 4)) if rng.random() < 0.7 else iban


def _aws_key(rng: random.Random) -> str:
    return "AKIA" + _rand(rng, _UPPER_ALNUM, 16)


def _bearer(rng: random.Random) -> str:
    # Ends in digits: real tokens nearly always hold one, and the redactor requires it.
    return _rand(rng, _ALNUM + "-_", 34) + str(rng.randint(10, 99))


def _api_key(rng: random.Random) -> str:
    secret = _rand(rng, _ALNUM, 30) + str(rng.randint(10, 99))
    return "sk-" + secret if rng.random() < 0.5 else secret


_PII_MAKERS: dict[str, Callable[[random.Random], str]] = {
    "EMAIL": _email, "PHONE": _phone, "IPV4": _ipv4, "IPV6": _ipv6, "CREDIT_CARD": _credit_card,
    "US_SSN": _ssn, "IBAN": _iban, "AWS_ACCESS_KEY": _aws_key, "BEARER_TOKEN": _bearer,
    "API_KEY": _api_key,
}  # fmt: skip
# The value is always followed by a space and a word, so no punctuation sticks to it.
_PII_SENTENCES = {
    "EMAIL": ("You can reach me at {v} if that is easier.", "My account email is {v} by the way."),
    "PHONE": ("Feel free to call me on {v} after five.", "My phone number is {v} if you need it."),
    "IPV4": ("The router lists the hub at {v} right now.", "My device got the address {v} today."),
    "IPV6": ("The app shows the IPv6 address {v} for the hub.",),
    "CREDIT_CARD": (
        "I paid with card {v} and was charged twice.",
        "The order went on {v} as usual.",
    ),
    "US_SSN": ("Your form asked for my social security number, it is {v} if that matters.",),
    "IBAN": ("Please refund me to my bank account {v} instead.",),
    "AWS_ACCESS_KEY": ("I set up the cloud export with access key {v} as the guide said.",),
    "BEARER_TOKEN": ("My script sends Authorization: Bearer {v} with every request.",),
    "API_KEY": ("My integration uses the key {v} and gets rejected.",),
    "API_KEY_ASSIGNMENT": ("In my config file I have api_key={v} set for the export.",),
}


# --- defects -----------------------------------------------------------------------------------
_SWAPS = {
    "your": "the", "quiet": "silent", "clear": "simple", "useful": "handy", "delicate": "fragile",
    "neatly": "tidily", "friendly": "helpful", "surprising": "remarkable", "gentle": "careful",
    "beginners": "newcomers", "routine": "daily", "rhythm": "pattern",
}  # fmt: skip
_APPENDED = (
    "Updated for the new season.",
    "Printed copies of this page may be out of date.",
    "Page reviewed by the Verdantia documentation team.",
    "Share this guide with your gardening club.",
    "See the app for the newest version of this page.",
)
_SHORT_A = ("ok", "thanks", "great", "cool", "nice", "sure", "yes", "nope", "fixed", "solved")
_SHORT_B = ("thanks", "now", "here", "again", "indeed", "then", "already", "finally", "mate")
_SHORT_END = ("", "!", ".", "?", " :)")


def _case_copy(text: str, rng: random.Random) -> str:
    return rng.choice((str.upper, str.lower, str.swapcase))(text)


def _space_copy(text: str, rng: random.Random) -> str:
    words = text.split(" ")
    gaps = rng.choices((" ", " ", "  ", "\t", " \t "), k=len(words) - 1)
    body = "".join(itertools.chain.from_iterable(zip(words, [*gaps, ""], strict=True)))
    return "  " + body + rng.choice((" ", "\t", "   "))


def _exact_copy(text: str, rng: random.Random) -> str:
    style = rng.choice(("verbatim", "case", "space", "both"))
    copy = _case_copy(text, rng) if style in ("case", "both") else text
    copy = _space_copy(copy, rng) if style in ("space", "both") else copy
    if _fold(copy) != _fold(text):
        raise AssertionError("exact duplicate copy does not fold to its original")
    return copy


def _near_copy(text: str, rng: random.Random) -> str:
    tokens = text.split(" ")
    spots = [i for i, token in enumerate(tokens) if token in _SWAPS]
    changes = rng.choice((0, 1, 2))
    if changes == 0 or len(spots) < changes:
        return text + "\n" + rng.choice(_APPENDED)
    for i in rng.sample(spots, changes):
        tokens[i] = _SWAPS[tokens[i]]
    return " ".join(tokens)


def _too_short_text(rng: random.Random) -> str:
    return f"{rng.choice(_SHORT_A)} {rng.choice(_SHORT_B)}{rng.choice(_SHORT_END)}"


def _low_alpha_text(rng: random.Random) -> str:
    rows = rng.randint(6, 12)
    cols = rng.randint(4, 6)
    return "\n".join(
        " | ".join(f"{rng.uniform(0, 100):.1f}" for _ in range(cols)) for _ in range(rows)
    )


def _repeated_lines_text(rng: random.Random) -> str:
    def paragraph() -> str:  # an FAQ page's introduction line
        return world.faq_page(rng).split("\n")[1]

    lines = [paragraph()] * 6 + [paragraph() for _ in range(4)]
    rng.shuffle(lines)
    return "\n".join(lines)  # 5 of 10 lines repeat an earlier one


_LOW_QUALITY_MAKERS = {
    "too_short": _too_short_text,
    "low_alpha": _low_alpha_text,
    "repeated_lines": _repeated_lines_text,
}

_ARTIFACT_CONTROLS = ("\x07", "\x08", "\x1b")


def _with_unicode_artifacts(text: str, rng: random.Random) -> str:
    """Add characters NFKC or the cleaner must fix: ligatures, full-width digits, ZWSP, BEL."""
    if rng.random() < 0.7:
        text = text.replace("fi", "\ufb01", 2).replace("fl", "\ufb02", 1)
    if rng.random() < 0.7:
        text = re.sub(r"\d+", lambda m: m.group().translate(_FULLWIDTH), text, count=1)
    if rng.random() < 0.7:
        space = rng.choice([m.start() for m in re.finditer(" ", text)])
        text = text[: space + 1] + rng.choice(_ARTIFACT_CONTROLS) + text[space + 1 :]
    words = text.split(" ")
    long_words = [i for i, word in enumerate(words) if len(word) >= 6 and word.isalpha()]
    for i in rng.sample(long_words, min(2, len(long_words))):
        words[i] = words[i][:3] + "\u200b" + words[i][3:]
    return " ".join(words)


_FULLWIDTH = str.maketrans("0123456789", "".join(chr(0xFF10 + d) for d in range(10)))


# --- the corpus --------------------------------------------------------------------------------


class _CorpusBuilder:
    """Generates documents and defects with one seeded rng and records what it planted."""

    def __init__(self, seed: int, plan: _Plan) -> None:
        self.rng = random.Random(seed)
        self.plan = plan
        self.counter = itertools.count()
        self.cycled_pages = 0
        self.coverage: Counter[str] = Counter()
        self.pii_values: set[str] = set()
        self.documents = {"jsonl": 0, "parquet": 0, "txt": 0}
        self.exact: list[list[str]] = []
        self.near: list[list[str]] = []
        self.pii: list[dict[str, str]] = []
        self.broken: list[dict[str, str]] = []
        self.low_quality: list[dict[str, str]] = []
        self.unicode: list[str] = []
        self.record_ids: dict[str, str] = {}

    def new_id(self, prefix: str) -> str:
        return f"{prefix}-{next(self.counter):07d}"

    def document(self, kind: str, note: str = "") -> str:
        """A new document of ``kind``; the facts it states count towards coverage."""
        stated: list[str] = []
        product = None
        if kind == "product_docs" and self.cycled_pages < 3 * len(world.PRODUCTS):
            # The first pages cycle through the products so even a tiny corpus covers every fact.
            product = world.PRODUCTS[self.cycled_pages % len(world.PRODUCTS)]
            self.cycled_pages += 1
        if kind == "support_ticket":
            text = world.support_ticket(self.rng, stated=stated, note=note)
        else:
            text = world.DOCUMENT_KINDS[kind](self.rng, product=product, stated=stated)
        self.coverage.update(set(stated))
        return text

    def plain_kind(self) -> str:
        if self.cycled_pages < 3 * len(world.PRODUCTS):
            return "product_docs"
        return self.rng.choices(_PLAIN_KINDS, _PLAIN_WEIGHTS)[0]

    def pii_note(self, doc_id: str) -> str:
        kind = PII_KINDS[len(self.pii) % len(PII_KINDS)]
        value = _PII_MAKERS[kind](self.rng)
        while value in self.pii_values:
            value = _PII_MAKERS[kind](self.rng)
        self.pii_values.add(value)
        self.pii.append({"kind": kind, "value": value, "doc_id": doc_id})
        assignment = kind == "API_KEY" and not value.startswith("sk-")
        templates = _PII_SENTENCES["API_KEY_ASSIGNMENT" if assignment else kind]
        return self.rng.choice(templates).format(v=value)

    # --- notes and tickets

    def write_notes(self, folder: Path) -> int:
        folder.mkdir(parents=True)
        written = 0
        for i, kind in enumerate(_NOTE_KINDS):
            data = (self.document(kind) + "\n").encode()
            (folder / f"{i:02d}-{kind}.txt").write_bytes(data)
            written += len(data)
        self.documents["txt"] = len(_NOTE_KINDS)
        return written

    def write_tickets(self, folder: Path, budget: int) -> int:
        rows = []
        for _ in range(self.plan.pii_tickets):
            doc_id = self.new_id("tkt")
            rows.append((doc_id, self.document("support_ticket", self.pii_note(doc_id))))
        used = sum(len(text) for _, text in rows)
        while used < budget:
            rows.append((self.new_id("tkt"), self.document("support_ticket")))
            used += len(rows[-1][1])
        self.rng.shuffle(rows)
        files = 2 if budget >= 200_000 else 1
        folder.mkdir(parents=True)
        return sum(self._write_parquet(folder, i, rows[i::files]) for i in range(files))

    def _write_parquet(self, folder: Path, index: int, rows: list[tuple[str, str]]) -> int:
        path = folder / f"part-{index:04d}.parquet"
        ids, texts = zip(*rows, strict=True)
        pq.write_table(pa.table({"id": list(ids), "text": list(texts)}), path)
        planted = {entry["doc_id"] for entry in self.pii}
        for row, doc_id in enumerate(ids):
            if doc_id in planted:
                self.record_ids[doc_id] = f"tickets/{path.name}#{row}"
        self.documents["parquet"] += len(rows)
        return path.stat().st_size

    # --- JSONL documents

    def line(self, doc_id: str, source: str, text: str) -> _Line:
        record = {"id": doc_id, "source": source, "text": text}
        return _Line((json.dumps(record, ensure_ascii=False) + "\n").encode(), doc_id)

    def plain_line(self) -> _Line:
        kind = self.plain_kind()
        return self.line(self.new_id("doc"), kind, self.document(kind))

    def write_docs(self, folder: Path, budget: int, oversized_line_bytes: int) -> int:
        lines = self.special_lines()
        if oversized_line_bytes > 0:
            lines.append(self.broken_line("oversized", oversized_line_bytes))
        used = sum(len(line.data) for line in lines if line.broken != "oversized")
        while used < budget:
            lines.append(self.plain_line())
            used += len(lines[-1].data)
        self.rng.shuffle(lines)
        return self._write_parts(folder, lines)

    def special_lines(self) -> list[_Line]:
        lines = [*self.exact_groups(), *self.near_groups(), *self.low_quality_lines()]
        for _ in range(self.plan.pii_docs):
            doc_id = self.new_id("doc")
            text = self.document("support_ticket", self.pii_note(doc_id))
            lines.append(self.line(doc_id, "support_ticket", text))
        for _ in range(self.plan.unicode_docs):
            doc_id, kind = self.new_id("doc"), self.plain_kind()
            self.unicode.append(doc_id)
            lines.append(
                self.line(doc_id, kind, _with_unicode_artifacts(self.document(kind), self.rng))
            )
        for reason in BROKEN_REASONS:
            lines += [self.broken_line(reason) for _ in range(self.plan.broken_each)]
        return lines

    def exact_groups(self) -> list[_Line]:
        lines = []
        for _ in range(self.plan.exact_groups):
            kind = self.plain_kind()
            text = self.document(kind)
            texts = [text] + [_exact_copy(text, self.rng) for _ in range(self.rng.randint(1, 3))]
            ids = [self.new_id("doc") for _ in texts]
            self.exact.append(ids)
            lines += [self.line(doc_id, kind, t) for doc_id, t in zip(ids, texts, strict=True)]
        return lines

    def near_groups(self) -> list[_Line]:
        lines = []
        for _ in range(self.plan.near_groups):
            text = self.document("product_docs")
            while len(text.split()) < 200:
                text = self.document("product_docs")
            texts = [text]
            while len(texts) < 1 + self.rng.randint(1, 2):
                copy = _near_copy(text, self.rng)
                if _fold(copy) not in {_fold(t) for t in texts}:
                    texts.append(copy)
            if min(shingle_jaccard(text, copy) for copy in texts[1:]) < 0.85:
                raise AssertionError("a near-duplicate copy drifted too far from its original")
            ids = [self.new_id("doc") for _ in texts]
            self.near.append(ids)
            lines += [self.line(i, "product_docs", t) for i, t in zip(ids, texts, strict=True)]
        return lines

    def low_quality_lines(self) -> list[_Line]:
        lines, seen = [], set()
        for reason, make in _LOW_QUALITY_MAKERS.items():
            for _ in range(self.plan.low_quality_each):
                text = make(self.rng)
                while text in seen:
                    text = make(self.rng)
                seen.add(text)
                doc_id = self.new_id("doc")
                lines.append(self.line(doc_id, "forum", text))
                self.low_quality.append({"doc_id": doc_id, "reason": reason})
        return lines

    def broken_line(self, reason: str, size: int = 0) -> _Line:
        doc_id = self.new_id("bad")
        text = world.faq_page(self.rng)  # unreadable, so it does not count towards coverage
        record: dict[str, object] = {"id": doc_id, "source": "faq", "text": text}
        if reason == "missing_field":
            record = {"id": doc_id, "source": "faq", "body": text}
        elif reason == "not_text":
            record["text"] = self.rng.choice((self.rng.randint(0, 10**6), text.split()[:5], None))
        elif reason == "oversized":
            flat = text.replace("\n", " ")  # no escapes, so the line is barely over size bytes
            record["text"] = (flat * (size // len(flat) + 1))[:size]
        data = json.dumps(record).encode()
        if reason == "invalid_json":
            data = data[: self.rng.randint(len(data) // 3, 2 * len(data) // 3)]
        elif reason == "invalid_utf8":
            space = data.index(b" ", data.index(b'"text"') + 12)
            data = data[:space] + b"\xff\xfe" + data[space:]
        return _Line(data + b"\n", broken=reason)

    def _write_parts(self, folder: Path, lines: list[_Line]) -> int:
        total = sum(len(line.data) for line in lines)
        parts = max(3, math.ceil(total / _MAX_PART_BYTES))
        folder.mkdir(parents=True)
        offsets, cumulative = [0] * parts, 0
        tracked = self._tracked_ids()
        with contextlib.ExitStack() as stack:
            paths = [folder / f"part-{i:04d}.jsonl" for i in range(parts)]
            handles = [stack.enter_context(path.open("wb")) for path in paths]
            for line in lines:
                part = min(parts - 1, cumulative * parts // total)
                cumulative += len(line.data)
                self._record_line(line, f"docs/{paths[part].name}", offsets[part], tracked)
                handles[part].write(line.data)
                offsets[part] += len(line.data)
        return total

    def _record_line(self, line: _Line, relpath: str, offset: int, tracked: set[str]) -> None:
        if line.broken:
            self.broken.append({"file": relpath, "reason": line.broken})
            return
        self.documents["jsonl"] += 1
        if line.doc_id in tracked:
            self.record_ids[line.doc_id] = f"{relpath}@{offset}"

    def _tracked_ids(self) -> set[str]:
        ids = {entry["doc_id"] for entry in self.pii + self.low_quality}
        ids.update(self.unicode, *self.exact, *self.near)
        return ids

    def truth(self, seed: int, target_bytes: int, total_bytes: int) -> PlantedTruth:
        documents = {**self.documents, "total": sum(self.documents.values())}
        return PlantedTruth(
            documents=documents,
            exact_duplicates=self.exact,
            near_duplicates=self.near,
            pii=self.pii,
            broken=self.broken,
            low_quality=self.low_quality,
            unicode_artifacts=self.unicode,
            facts_corpus_coverage={fact.id: self.coverage[fact.id] for fact in world.FACTS},
            record_ids=dict(sorted(self.record_ids.items())),
            seed=seed,
            target_bytes=target_bytes,
            total_bytes=total_bytes,
        )


def generate_corpus(
    out_dir: Path, target_bytes: int = 5_000_000, seed: int = 0, oversized_line_bytes: int = 0
) -> PlantedTruth:
    """Write the raw corpus under ``out_dir/raw/`` and ``out_dir/planted.json``; return the truth.

    Files under raw/ add up to ``target_bytes`` (within a few percent) plus, when
    ``oversized_line_bytes`` > 0, one extra JSONL line whose text is that many bytes.
    """
    out_dir = Path(out_dir)
    raw = out_dir / "raw"
    if target_bytes < MIN_TARGET_BYTES:
        raise ValueError(f"target_bytes must be at least {MIN_TARGET_BYTES}, got {target_bytes}")
    if oversized_line_bytes < 0:
        raise ValueError(f"oversized_line_bytes must be >= 0, got {oversized_line_bytes}")
    if raw.exists() and any(raw.iterdir()):
        raise FileExistsError(f"{raw} already holds files; pass an empty or new output directory")
    builder = _CorpusBuilder(seed, _Plan.for_size(target_bytes))
    spent = builder.write_notes(raw / "notes")
    spent += builder.write_tickets(raw / "tickets", int(target_bytes * _TICKET_SHARE))
    spent += builder.write_docs(raw / "docs", target_bytes - spent, oversized_line_bytes)
    truth = builder.truth(seed, target_bytes, spent)
    (out_dir / "planted.json").write_text(truth.to_json())
    return truth


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write the demo's raw corpus and planted.json.")
    parser.add_argument("--out", type=Path, required=True, help="output directory (new or empty)")
    parser.add_argument("--size-mb", type=float, default=5.0, help="raw size in MB (10^6 bytes)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--oversized-line-mb", type=float, default=0.0, help="add one JSONL line this big (MB)"
    )
    args = parser.parse_args(argv)
    start = time.perf_counter()
    truth = generate_corpus(
        args.out, int(args.size_mb * MB), args.seed, int(args.oversized_line_mb * MB)
    )
    summary = {
        "out": str(args.out),
        "total_bytes": truth.total_bytes,
        "documents": truth.documents,
        "exact_duplicate_groups": len(truth.exact_duplicates),
        "near_duplicate_groups": len(truth.near_duplicates),
        "pii": len(truth.pii),
        "broken": len(truth.broken),
        "low_quality": len(truth.low_quality),
        "seconds": round(time.perf_counter() - start, 2),
    }
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
