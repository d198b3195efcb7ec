"""Storage: URIs to locations, atomic writes, listing, on local disk and on the S3 server."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pyarrow as pa
import pytest

from core import storage
from core.storage import StorageError


def test_resolve_forms(tmp_path: Path) -> None:
    assert storage.resolve(str(tmp_path)).path == tmp_path.as_posix()
    assert storage.resolve(f"file://{tmp_path}").path == tmp_path.as_posix()
    loc = storage.resolve("s3://bucket/some/prefix/")
    assert (loc.scheme, loc.path, loc.uri) == (
        "s3",
        "bucket/some/prefix",
        "s3://bucket/some/prefix",
    )
    assert loc.join("a", "b.json").uri == "s3://bucket/some/prefix/a/b.json"


@pytest.mark.parametrize("bad", ["", "gs://bucket/x", "s3://ab/x", "s3:///nobucket"])
def test_resolve_rejects_bad_uris(bad: str) -> None:
    with pytest.raises(StorageError):
        storage.resolve(bad)


def test_s3_settings_fall_back_to_aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "from-env")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret-from-env")
    s3 = storage.resolve("s3://bucket/x").s3
    assert (s3.endpoint_url, s3.access_key_id) == ("http://127.0.0.1:1", "from-env")


def test_location_pickles_without_its_client(store) -> None:
    loc = storage.resolve(store.uri("a"), store.settings)
    storage.write_bytes(loc.join("x"), b"1")  # builds the client
    clone = pickle.loads(pickle.dumps(loc))
    assert clone == loc and "fs" not in clone.__dict__
    assert storage.read_bytes(clone.join("x")) == b"1"


def test_write_read_roundtrip(store) -> None:
    root = storage.resolve(store.uri("rt"), store.settings)
    storage.write_json(root.join("a", "b.json"), {"k": [1, 2]})
    storage.write_text(root.join("c.txt"), "hello")
    table = pa.table({"x": [1, 2, 3]})
    storage.write_parquet(root.join("d.parquet"), table)
    assert storage.read_json(root.join("a", "b.json")) == {"k": [1, 2]}
    assert storage.read_bytes(root.join("c.txt")) == b"hello"
    assert storage.read_parquet(root.join("d.parquet")).equals(table)
    assert storage.exists(root.join("c.txt")) and not storage.exists(root.join("nope"))
    with pytest.raises(StorageError, match="not found"):
        storage.read_bytes(root.join("nope"))


def test_large_write_and_ranged_read(store) -> None:
    """Multi-megabyte objects (multipart on S3) and ranged reads, as the JSONL reader uses."""
    root = storage.resolve(store.uri("big"), store.settings)
    data = os.urandom(12 << 20)
    storage.write_bytes(root.join("blob"), data)
    with root.fs.open_input_file(root.join("blob").path) as f:
        f.seek(7 << 20)
        assert f.read(1000) == data[7 << 20 : (7 << 20) + 1000]


def test_list_files_glob_sorted_and_hides_work_files(store) -> None:
    root = storage.resolve(store.uri("ls"), store.settings)
    for rel in ["b/x.jsonl", "a/y.jsonl", "a/z.txt", "top.jsonl", "_work/w.jsonl", ".tmp.jsonl"]:
        storage.write_text(root.join(rel), "{}")
    assert [e.relpath for e in storage.list_files(root, "**/*.jsonl")] == [
        "a/y.jsonl",
        "b/x.jsonl",
        "top.jsonl",
    ]
    assert [e.relpath for e in storage.list_files(root, "*.jsonl")] == ["top.jsonl"]
    single = storage.list_files(root.join("a", "z.txt"))
    assert [(e.relpath, e.size) for e in single] == [("z.txt", 2)]
    assert storage.list_files(root.join("missing")) == []


def test_upload_download_dir(store, tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a.txt").write_text("a")
    (src / "sub" / "b.bin").write_bytes(b"\x00\x01")
    dest = storage.resolve(store.uri("copy"), store.settings)
    storage.upload_dir(src, dest)
    out = storage.download_dir(dest, tmp_path / "out")
    assert (out / "a.txt").read_text() == "a" and (
        out / "sub" / "b.bin"
    ).read_bytes() == b"\x00\x01"
    storage.delete(dest)
    assert storage.list_files(dest) == []


def test_failed_local_write_leaves_old_content_and_no_temp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = storage.resolve(str(tmp_path / "f.json"))
    storage.write_text(target, "old")

    def crash(*_args: object) -> None:
        raise OSError("disk gone")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk gone"):
        storage.write_text(target, "new")
    assert (tmp_path / "f.json").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.json"]


def test_glob_to_regex() -> None:
    rx = storage.glob_to_regex("**/*.jsonl")
    assert rx.fullmatch("a.jsonl") and rx.fullmatch("x/y/a.jsonl") and not rx.fullmatch("a.json")
    assert not storage.glob_to_regex("*.txt").fullmatch("d/a.txt")


def test_a_retried_exclusive_create_that_had_succeeded_is_ours(cas_store) -> None:
    # A conditional PUT that succeeded but whose answer was lost is retried and gets 412:
    # reading back the same bytes says the first try made it (on main: False, "lost").
    loc = storage.resolve(cas_store.uri("cas", "key"), cas_store.settings)
    assert storage.create_exclusive(loc, b"mine")
    assert storage.create_exclusive(loc, b"mine")  # the retry
    assert not storage.create_exclusive(loc, b"theirs")
    assert storage.read_bytes(loc) == b"mine"


def test_a_compressed_file_s_bytes_are_stored_and_read_as_they_are(store) -> None:
    """pyarrow guesses a codec from a name by default: ``part.jsonl.gz`` was compressed
    again on upload to S3 and handed back decompressed, so a corpus uploaded gzipped read as
    garbage."""
    import gzip

    body = gzip.compress(b'{"text": "one"}\n')
    loc = storage.resolve(store.uri("raw", "part.jsonl.gz"), store.settings)
    storage.write_bytes(loc, body)
    assert storage.read_bytes(loc) == body
    if loc.is_local:  # what is stored, read past pyarrow
        stored = Path(loc.path).read_bytes()
    else:
        bucket, _, key = loc.path.partition("/")
        stored = loc.s3_client.get_object(Bucket=bucket, Key=key)["Body"].read()
    assert stored == body
