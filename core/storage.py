"""Object storage: the one place that turns a location into a pyarrow filesystem and a path.

A location is a plain path, a ``file://`` URI or ``s3://bucket/prefix``. Nothing else in the
code base builds storage clients: it asks :func:`resolve` for a :class:`Location` and uses the
helpers here, so the same job runs on a laptop (local disk) and on a cluster (S3).

Publishing is atomic. On local disk a file is written under a temporary name, flushed to disk
and renamed into place; on S3 a PUT (multipart included) becomes visible only when it
completes, so an interrupted write leaves nothing behind. Multi-file artifacts (snapshots,
model versions) are published by writing ``manifest.json`` last: readers go through it.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import os
import re
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from core import local_disk
from schemas.storage import S3Settings, StorageSettings

# Newer AWS SDKs send checksums that S3-compatible servers mishandle (failed ranged reads, chunk
# framing stored inside objects). "when_required" restores the classic behaviour; the AWS C++ SDK
# inside pyarrow reads these when a client is created, so they are set before building one.
_S3_COMPAT_ENV = {
    "AWS_REQUEST_CHECKSUM_CALCULATION": "when_required",
    "AWS_RESPONSE_CHECKSUM_VALIDATION": "when_required",
}


class StorageError(RuntimeError):
    """A location that cannot be used as asked (bad URI, missing object)."""


@dataclass(frozen=True)
class Location:
    """A file or folder in object storage: a scheme, a path inside it and how to reach it.

    Picklable and cheap: the filesystem client is built lazily in each process that uses it,
    so a Location can be shipped to Ray tasks and actors as is.
    """

    scheme: str
    path: str
    s3: S3Settings | None = field(default=None, compare=False)

    @functools.cached_property
    def fs(self) -> pafs.FileSystem:
        if self.scheme == "s3":
            return _s3_filesystem(self.s3 or S3Settings())
        return pafs.LocalFileSystem()

    @functools.cached_property
    def s3_client(self) -> Any:
        """A boto3 client, only for what pyarrow cannot do (conditional writes)."""
        return _boto3_client(self.s3 or S3Settings())

    def __getstate__(self) -> dict[str, Any]:
        # Clients are per process; rebuild them after unpickling.
        return {k: v for k, v in self.__dict__.items() if k not in ("fs", "s3_client")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    @property
    def uri(self) -> str:
        return f"s3://{self.path}" if self.scheme == "s3" else self.path

    @property
    def is_local(self) -> bool:
        return self.scheme == "file"

    @property
    def name(self) -> str:
        return self.path.rstrip("/").rsplit("/", 1)[-1]

    def join(self, *parts: str) -> Location:
        path = "/".join([self.path.rstrip("/"), *(p.strip("/") for p in parts if p)])
        return Location(self.scheme, path, self.s3)

    def parent(self) -> Location:
        return Location(self.scheme, self.path.rstrip("/").rsplit("/", 1)[0], self.s3)

    def __str__(self) -> str:
        return self.uri


def resolve(uri: str | Location, settings: StorageSettings | None = None) -> Location:
    """Turn ``uri`` (plain path, ``file://...`` or ``s3://bucket/prefix``) into a Location.

    S3 connection settings come from ``settings`` first, then the AWS environment variables.
    """
    if isinstance(uri, Location):
        return uri
    if not uri:
        raise StorageError("empty location: give a path, file:// or s3:// URI")
    parsed = urlparse(uri)
    if parsed.scheme == "s3":
        if not parsed.netloc or len(parsed.netloc) < 3:
            raise StorageError(f"{uri!r}: an s3:// URI needs a bucket name of 3+ characters")
        path = f"{parsed.netloc}/{parsed.path.lstrip('/')}".rstrip("/")
        return Location("s3", path, _merge_env(settings.s3 if settings else S3Settings()))
    if parsed.scheme == "file":
        return Location("file", _local_path(parsed.path))
    if parsed.scheme and len(parsed.scheme) > 1:  # one letter is a Windows drive, not a scheme
        raise StorageError(f"{uri!r}: unsupported scheme {parsed.scheme!r}; use a path or s3://")
    return Location("file", _local_path(uri))


def _local_path(path: str) -> str:
    return Path(path).expanduser().resolve().as_posix()


def _merge_env(s3: S3Settings) -> S3Settings:
    env = os.environ
    return S3Settings(
        endpoint_url=s3.endpoint_url
        or env.get("AWS_ENDPOINT_URL_S3")
        or env.get("AWS_ENDPOINT_URL"),
        region=s3.region or env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION"),
        access_key_id=s3.access_key_id or env.get("AWS_ACCESS_KEY_ID"),
        secret_access_key=s3.secret_access_key or env.get("AWS_SECRET_ACCESS_KEY"),
        session_token=s3.session_token or env.get("AWS_SESSION_TOKEN"),
        request_timeout_s=s3.request_timeout_s,
    )


def _s3_filesystem(s3: S3Settings) -> pafs.S3FileSystem:
    kwargs: dict[str, Any] = {
        "region": s3.region or "us-east-1",
        "request_timeout": s3.request_timeout_s,
        "connect_timeout": min(10.0, s3.request_timeout_s),
    }
    if s3.access_key_id and s3.secret_access_key:
        kwargs.update(access_key=s3.access_key_id, secret_key=s3.secret_access_key)
        if s3.session_token:
            kwargs["session_token"] = s3.session_token
    if s3.endpoint_url:
        # pyarrow ignores AWS_ENDPOINT_URL, so the endpoint is always passed explicitly;
        # path-style addressing (the default without virtual addressing) suits any server.
        for key, value in _S3_COMPAT_ENV.items():
            os.environ.setdefault(key, value)
        url = urlparse(s3.endpoint_url)
        kwargs.update(endpoint_override=url.netloc or url.path, scheme=url.scheme or "https")
    return pafs.S3FileSystem(**kwargs)


def _boto3_client(s3: S3Settings) -> Any:
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=s3.endpoint_url,
        region_name=s3.region or "us-east-1",
        aws_access_key_id=s3.access_key_id,
        aws_secret_access_key=s3.secret_access_key,
        aws_session_token=s3.session_token,
        config=Config(
            s3={"addressing_style": "path"},
            connect_timeout=min(10.0, s3.request_timeout_s),
            read_timeout=s3.request_timeout_s,
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            retries={"max_attempts": 5, "mode": "standard"},
        ),
    )


# ---------------------------------------------------------------------------------------------
# Reading and writing


def exists(loc: Location) -> bool:
    return loc.fs.get_file_info(loc.path).type != pafs.FileType.NotFound


def read_bytes(loc: Location) -> bytes:
    try:
        # compression=None: pyarrow would otherwise guess a codec from the name ("detect")
        # and hand back part.jsonl.gz decompressed, or compress it again on write.
        with loc.fs.open_input_stream(loc.path, compression=None) as f:
            return f.read()
    except FileNotFoundError as e:
        raise StorageError(f"{loc.uri}: not found") from e


def read_json(loc: Location) -> Any:
    return json.loads(read_bytes(loc))


def read_json_if_exists(loc: Location) -> Any:
    """:func:`read_json`, or None where nothing is stored yet (a first start, no state)."""
    return read_json(loc) if exists(loc) else None


def write_bytes(loc: Location, data: bytes) -> None:
    """Write ``data`` to ``loc`` atomically: readers see the old object or the whole new one."""
    if loc.is_local:
        local_disk.write_atomic(Path(loc.path), data)
        return
    # An S3 PUT (or multipart upload) is only visible once complete: already atomic.
    with loc.fs.open_output_stream(loc.path, compression=None) as f:
        f.write(data)


def create_exclusive(loc: Location, data: bytes) -> bool:
    """Create ``loc`` with ``data`` only if nothing is there yet; False if something is.

    The building block of compare-and-swap: whoever creates a key first wins. Local disk uses
    a hard link (atomic, fails if the name exists); S3 uses a conditional PUT
    (``If-None-Match: *``), which AWS S3 and MinIO honour. See :func:`check_exclusive_create`.

    Idempotent under retries: a PUT that succeeded but whose answer was lost is retried (by
    botocore or a caller) and gets 412; what is there is then read back, and if it is
    exactly ``data`` the create was ours: True.
    """
    if loc.is_local:
        return local_disk.create_exclusive(Path(loc.path), data)
    from botocore.exceptions import ClientError

    bucket, _, key = loc.path.partition("/")
    try:
        loc.s3_client.put_object(Bucket=bucket, Key=key, Body=data, IfNoneMatch="*")
    except ClientError as e:
        status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if status in (409, 412) or e.response.get("Error", {}).get("Code") in (
            "PreconditionFailed",
            "ConditionalRequestConflict",
        ):
            return _holds(loc, data)
        raise
    return True


def _holds(loc: Location, data: bytes) -> bool:
    """Whether ``loc`` holds exactly ``data`` (a retried create that had succeeded)."""
    try:
        return read_bytes(loc) == data
    except StorageError:  # gone again: not ours either
        return False


def check_exclusive_create(root: Location) -> None:
    """Fail clearly if the store ignores conditional writes (some S3 emulators do), since
    compare-and-swap built on :func:`create_exclusive` would silently lose updates."""
    probe = root.join("_probe", uuid.uuid4().hex)
    try:
        if not create_exclusive(probe, b"1") or create_exclusive(probe, b"2"):
            raise StorageError(
                f"{root.uri}: the object store does not honour conditional writes "
                "(PUT with If-None-Match: *). The registry needs them to keep concurrent "
                "updates safe: use AWS S3, MinIO or another store that supports them."
            )
    finally:
        delete(probe)


def write_json(loc: Location, obj: Any) -> None:
    write_bytes(loc, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def write_text(loc: Location, text: str) -> None:
    write_bytes(loc, text.encode())


def write_parquet(loc: Location, table: pa.Table) -> None:
    """Write a Parquet file atomically (serialised in memory first: shards are small)."""
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd")
    write_bytes(loc, sink.getvalue())


def read_parquet(loc: Location, columns: list[str] | None = None) -> pa.Table:
    try:
        return pq.read_table(loc.path, columns=columns, filesystem=loc.fs)
    except FileNotFoundError as e:
        raise StorageError(f"{loc.uri}: not found") from e


def delete(loc: Location) -> None:
    """Delete a file or a whole folder; missing is fine."""
    info = loc.fs.get_file_info(loc.path)
    if info.type == pafs.FileType.File:
        loc.fs.delete_file(loc.path)
    elif info.type == pafs.FileType.Directory and loc.is_local:
        loc.fs.delete_dir(loc.path)
    elif info.type == pafs.FileType.Directory:
        _delete_s3_prefix(loc)


def _delete_s3_prefix(loc: Location) -> None:
    # Some S3-compatible servers (rclone) fail on the implicit folder keys pyarrow also tries
    # to delete; what matters is that no object is left under the prefix.
    try:
        loc.fs.delete_dir_contents(loc.path, missing_dir_ok=True)
    except OSError:
        if list_files(loc, "**"):
            raise
    with contextlib.suppress(OSError, FileNotFoundError):
        loc.fs.delete_dir(loc.path)


# ---------------------------------------------------------------------------------------------
# Listing and copying folders


@dataclass(frozen=True)
class FileEntry:
    """A file found under a folder: its path relative to that folder, size and location."""

    relpath: str
    size: int
    location: Location


def list_files(loc: Location, pattern: str = "**/*") -> list[FileEntry]:
    """Files under ``loc`` (or ``loc`` itself) whose relative path matches a ``**`` glob.

    Sorted by relative path so every caller sees the same order. Hidden files and folders
    (names starting with '.' or '_', e.g. temporary or work files) are skipped.
    """
    info = loc.fs.get_file_info(loc.path)
    if info.type == pafs.FileType.File:
        return [FileEntry(loc.name, info.size, loc)]
    if info.type == pafs.FileType.NotFound:
        return []
    selector = pafs.FileSelector(loc.path, recursive=True, allow_not_found=True)
    regex = glob_to_regex(pattern)
    base = loc.path.rstrip("/") + "/"
    entries = []
    for item in loc.fs.get_file_info(selector):
        rel = item.path[len(base) :]
        if item.type != pafs.FileType.File or _hidden(rel) or not regex.fullmatch(rel):
            continue
        entries.append(FileEntry(rel, item.size, loc.join(rel)))
    return sorted(entries, key=lambda e: e.relpath)


def _hidden(relpath: str) -> bool:
    return any(part.startswith((".", "_")) for part in relpath.split("/"))


def glob_to_regex(pattern: str) -> re.Pattern[str]:
    """Translate a glob where ``**/`` spans folders and ``*``/``?`` stay within one."""
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out))


def upload_dir(local_dir: Path, dest: Location) -> None:
    """Copy a local folder's files to ``dest`` (each file written atomically)."""
    for path in sorted(Path(local_dir).rglob("*")):
        if path.is_file():
            write_bytes(dest.join(path.relative_to(local_dir).as_posix()), path.read_bytes())


def download_dir(src: Location, local_dir: Path) -> Path:
    """Copy the files under ``src`` into ``local_dir`` (created); returns ``local_dir``."""
    local_dir = Path(local_dir)
    if src.is_local and Path(src.path).is_dir():
        shutil.copytree(src.path, local_dir, dirs_exist_ok=True)
        return local_dir
    for entry in list_files(src):
        target = local_dir / entry.relpath
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(read_bytes(entry.location))
    return local_dir
