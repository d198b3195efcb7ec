"""The demo world's facts and documents, and the sample corpus with its planted ground truth."""

from __future__ import annotations

import json
import random
import re
import unicodedata
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from demo import world
from demo.corpus import (
    BROKEN_REASONS,
    LOW_QUALITY_REASONS,
    PII_KINDS,
    PlantedTruth,
    generate_corpus,
    main,
    shingle_jaccard,
)

SIZE = 200_000


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, PlantedTruth]:
    out = tmp_path_factory.mktemp("corpus")
    return out, generate_corpus(out, SIZE, seed=0)


@pytest.fixture(scope="module")
def docs(corpus: tuple[Path, PlantedTruth]) -> dict[str, str]:
    """Readable documents with an id (JSONL and Parquet), by id."""
    raw = corpus[0] / "raw"
    found = {}
    for path in sorted((raw / "docs").glob("*.jsonl")):
        for line in path.read_bytes().splitlines():
            if _broken_reason(line) is None:
                record = json.loads(line)
                found[record["id"]] = record["text"]
    for path in sorted((raw / "tickets").glob("*.parquet")):
        table = pq.read_table(path).to_pydict()
        found.update(zip(table["id"], table["text"], strict=True))
    return found


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def _broken_reason(line: bytes, max_bytes: int = 2_000_000) -> str | None:
    try:
        record = json.loads(line.decode("utf-8"))
    except UnicodeDecodeError:
        return "invalid_utf8"
    except json.JSONDecodeError:
        return "invalid_json"
    if "text" not in record:
        return "missing_field"
    if not isinstance(record["text"], str):
        return "not_text"
    return "oversized" if len(line) > max_bytes else None


# The quality rules of the ingest recipe, restated so these tests stand alone.
def _clean(text: str) -> str:
    text = unicodedata.normalize("NFKC", text)
    text = "".join(c for c in text if c in "\n\t" or unicodedata.category(c) not in ("Cc", "Cf"))
    return "\n".join(" ".join(line.split()) for line in text.split("\n")).strip()


def _quality_reason(text: str) -> str | None:
    visible = [c for c in text if not c.isspace()]
    lines = [line for line in text.split("\n") if line.strip()]
    if len(text) < 32:
        return "too_short"
    if sum(c.isalpha() for c in visible) / len(visible) < 0.6:
        return "low_alpha"
    if len(lines) >= 3 and (len(lines) - len(set(lines))) / len(lines) > 0.3:
        return "repeated_lines"
    return None


# --- facts -------------------------------------------------------------------------------------


def test_facts_are_well_formed() -> None:
    assert 40 <= len(world.FACTS) <= 60
    assert len(world.facts_by_id()) == len(world.FACTS)
    assert {fact.product for fact in world.FACTS} >= {p.name for p in world.PRODUCTS}
    for fact in world.FACTS:
        assert 2 <= len(fact.questions) <= 3 and 1 <= len(fact.heldout_questions) <= 2
        assert all(q.strip() for q in fact.questions + fact.heldout_questions)
        assert not set(fact.questions) & set(fact.heldout_questions)
        assert fact.answer and fact.answer_sentence.endswith(".")


def test_is_correct_accepts_every_way_a_fact_is_stated() -> None:
    for fact in world.FACTS:
        assert world.is_correct(fact, fact.answer_sentence), fact.id
        assert all(world.is_correct(fact, s) for s in world.fact_statements(fact)), fact.id


def test_is_correct_rejects_other_facts_and_the_questions() -> None:
    for fact in world.FACTS:
        for other in world.FACTS:
            if other is not fact:
                assert not world.is_correct(fact, other.answer_sentence), (fact.id, other.id)
        for question in fact.questions + fact.heldout_questions:
            assert not world.is_correct(fact, question), (fact.id, question)


@pytest.mark.parametrize(
    ("fact_id", "good", "bad"),
    [
        ("heron-h2.battery_life", ["A 36-hour battery.", "36 HOURS!", "about 36h"], ["360 hours"]),
        ("heron-h2.price", ["It is 149 dollars", "$149.00", "US$149"], ["$1499", "$14.9"]),
        ("heron-h2.error_code", ["Error e-14.", "code E 14"], ["E140", "E41"]),
        ("heron-h2.firmware", ["v4.2.1 is out", "version 4.2.1."], ["4.2.10", "4.2"]),
        ("wren-w1.warranty", ["one year", "a 1-yr warranty"], ["11 years", "1 month"]),
        ("osprey-o7.color", ["It is lagoon-blue."], ["It is blue."]),
        ("heron-h2.model_number", ["vh2041", "VH 2041"], ["VH-2042"]),
    ],
)
def test_is_correct_tolerates_formatting(fact_id: str, good: list[str], bad: list[str]) -> None:
    fact = world.facts_by_id()[fact_id]
    assert all(world.is_correct(fact, text) for text in good)
    assert not any(world.is_correct(fact, text) for text in bad)


def test_independent_documents_are_not_near_duplicates() -> None:
    rng = random.Random(7)
    kinds = list(world.DOCUMENT_KINDS.values())
    texts = [kinds[i % len(kinds)](rng) for i in range(300)]
    assert all(150 <= len(text.split()) <= 420 for text in texts[::4])  # product pages
    shingles = [_shingle_set(text) for text in texts]
    worst = max(len(a & b) / len(a | b) for i, a in enumerate(shingles) for b in shingles[i + 1 :])
    assert worst < 0.5


def _shingle_set(text: str) -> set[tuple[str, ...]]:
    words = re.findall(r"\w+", text.lower())
    return {tuple(words[i : i + 5]) for i in range(len(words) - 4)}


def test_documents_pass_the_quality_rules() -> None:
    rng = random.Random(3)
    for make in world.DOCUMENT_KINDS.values():
        for _ in range(50):
            assert _quality_reason(_clean(make(rng))) is None


# --- corpus ------------------------------------------------------------------------------------


def test_same_seed_gives_identical_files(corpus: tuple[Path, PlantedTruth], tmp_path: Path) -> None:
    generate_corpus(tmp_path / "again", SIZE, seed=0)
    assert _files(tmp_path / "again") == _files(corpus[0])
    generate_corpus(tmp_path / "other", SIZE, seed=1)
    assert _files(tmp_path / "other") != _files(corpus[0])


def test_layout_and_size(corpus: tuple[Path, PlantedTruth], docs: dict[str, str]) -> None:
    out, truth = corpus
    raw = out / "raw"
    sizes = {path: len(data) for path, data in _files(raw).items()}
    assert sum(sizes.values()) == truth.total_bytes
    assert abs(truth.total_bytes - SIZE) <= 0.1 * SIZE
    assert len([p for p in sizes if p.startswith("docs/") and p.endswith(".jsonl")]) >= 3
    assert 1 <= len([p for p in sizes if p.startswith("tickets/")]) <= 2
    notes = [p for p in sizes if p.startswith("notes/") and p.endswith(".txt")]
    assert len(notes) == truth.documents["txt"] >= 3
    assert truth.documents["jsonl"] + truth.documents["parquet"] == len(docs)
    assert truth.documents["total"] == len(docs) + len(notes)


def test_planted_json_round_trips(corpus: tuple[Path, PlantedTruth]) -> None:
    out, truth = corpus
    assert PlantedTruth.from_json((out / "planted.json").read_text()) == truth
    assert PlantedTruth.from_json(truth.to_json()) == truth


def test_pii_is_planted_once_in_good_documents(
    corpus: tuple[Path, PlantedTruth], docs: dict[str, str]
) -> None:
    truth = corpus[1]
    assert {entry["kind"] for entry in truth.pii} == set(PII_KINDS)
    values = [entry["value"] for entry in truth.pii]
    assert len(values) == len(set(values))
    excluded = {d for group in truth.exact_duplicates + truth.near_duplicates for d in group}
    excluded |= {entry["doc_id"] for entry in truth.low_quality}
    everything = "\n".join(docs.values())
    for entry in truth.pii:
        assert entry["value"] in docs[entry["doc_id"]], entry
        assert everything.count(entry["value"]) == 1, entry
        assert entry["doc_id"] not in excluded
        assert _pii_value_is_valid(entry["kind"], entry["value"]), entry


def _pii_value_is_valid(kind: str, value: str) -> bool:
    compact = re.sub(r"[ -]", "", value)
    if kind == "CREDIT_CARD":
        digits = [int(c) for c in reversed(compact)]
        total = sum(
            d if i % 2 == 0 else (2 * d - 9 if d > 4 else 2 * d) for i, d in enumerate(digits)
        )
        return len(compact) == 16 and total % 10 == 0
    if kind == "IBAN":
        return int("".join(str(int(c, 36)) for c in compact[4:] + compact[:4])) % 97 == 1
    if kind == "US_SSN":
        return re.fullmatch(r"\d{3}-\d{2}-\d{4}", value) is not None and 1 <= int(value[:3]) <= 665
    if kind == "AWS_ACCESS_KEY":
        return re.fullmatch(r"AKIA[A-Z0-9]{16}", value) is not None
    return True


def test_broken_lines_are_broken_as_planted(corpus: tuple[Path, PlantedTruth]) -> None:
    out, truth = corpus
    found = Counter()
    for path in sorted((out / "raw" / "docs").glob("*.jsonl")):
        for line in path.read_bytes().splitlines():
            reason = _broken_reason(line)
            if reason:
                found[(f"docs/{path.name}", reason)] += 1
    assert found == Counter((entry["file"], entry["reason"]) for entry in truth.broken)
    assert {reason for _, reason in found} == set(BROKEN_REASONS)


def test_oversized_line_is_planted_once(tmp_path: Path) -> None:
    truth = generate_corpus(tmp_path, SIZE, seed=2, oversized_line_bytes=2_500_000)
    assert [e["reason"] for e in truth.broken].count("oversized") == 1
    assert abs(truth.total_bytes - SIZE - 2_500_000) <= 0.1 * SIZE
    lines = [line for p in (tmp_path / "raw" / "docs").glob("*.jsonl") for line in p.open("rb")]
    oversized = [json.loads(line) for line in lines if len(line) > 2_000_000]
    assert len(oversized) == 1 and len(oversized[0]["text"].encode()) == 2_500_000


def test_low_quality_documents_fail_as_planted(
    corpus: tuple[Path, PlantedTruth], docs: dict[str, str]
) -> None:
    planted = {entry["doc_id"]: entry["reason"] for entry in corpus[1].low_quality}
    assert set(planted.values()) == set(LOW_QUALITY_REASONS)
    for doc_id, text in docs.items():
        assert _quality_reason(_clean(text)) == planted.get(doc_id), doc_id


def test_exact_duplicates_fold_to_one_text(
    corpus: tuple[Path, PlantedTruth], docs: dict[str, str]
) -> None:
    groups = corpus[1].exact_duplicates
    assert len(groups) >= 3

    def fold(doc_id: str) -> str:
        return " ".join(docs[doc_id].casefold().split())

    assert all(len({fold(d) for d in group}) == 1 for group in groups)
    assert len({fold(group[0]) for group in groups}) == len(groups)
    copies = [docs[d] for group in groups for d in group[1:]]
    assert any(docs[group[0]] != docs[d] for group in groups for d in group[1:]), copies


def test_near_duplicates_are_similar_but_not_equal(
    corpus: tuple[Path, PlantedTruth], docs: dict[str, str]
) -> None:
    for original, *copies in corpus[1].near_duplicates:
        assert len(docs[original].split()) >= 200
        for copy in copies:
            assert 0.85 <= shingle_jaccard(docs[original], docs[copy]) < 1.0
            assert docs[copy].casefold().split() != docs[original].casefold().split()


def test_corpus_covers_every_fact_but_no_heldout_question(
    corpus: tuple[Path, PlantedTruth], docs: dict[str, str]
) -> None:
    coverage = corpus[1].facts_corpus_coverage
    assert set(coverage) == set(world.facts_by_id())
    assert min(coverage.values()) >= 3
    everything = "\n".join(docs.values()).casefold()
    for fact in world.FACTS:
        assert not any(q.casefold() in everything for q in fact.heldout_questions), fact.id


def test_unicode_artifacts_clean_into_good_documents(
    corpus: tuple[Path, PlantedTruth], docs: dict[str, str]
) -> None:
    ids = corpus[1].unicode_artifacts
    assert len(ids) >= 5
    for doc_id in ids:
        text = docs[doc_id]
        assert _clean(text) != text and "\u200b" in text
        assert _quality_reason(_clean(text)) is None


def test_refuses_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least"):
        generate_corpus(tmp_path / "small", 1_000)
    (tmp_path / "used" / "raw").mkdir(parents=True)
    (tmp_path / "used" / "raw" / "old.txt").write_text("x")
    with pytest.raises(FileExistsError, match="empty"):
        generate_corpus(tmp_path / "used", SIZE)


def test_cli_writes_the_corpus(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    main(["--out", str(tmp_path), "--size-mb", "0.2", "--seed", "3"])
    summary = json.loads(capsys.readouterr().out)
    assert (
        summary["documents"]
        == PlantedTruth.from_json((tmp_path / "planted.json").read_text()).documents
    )


def test_record_ids_locate_planted_documents(corpus: tuple[Path, PlantedTruth]) -> None:
    out, truth = corpus
    assert {entry["doc_id"] for entry in truth.pii} <= set(truth.record_ids)
    for doc_id, record_id in truth.record_ids.items():
        if "@" in record_id:
            relpath, offset = record_id.split("@")
            with (out / "raw" / relpath).open("rb") as f:
                f.seek(int(offset))
                assert json.loads(f.readline())["id"] == doc_id
        else:
            relpath, row = record_id.split("#")
            assert pq.read_table(out / "raw" / relpath)["id"][int(row)].as_py() == doc_id
