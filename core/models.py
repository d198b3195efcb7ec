"""Loading models and tokenizers from anywhere a user points: a local Hugging Face folder or an
``s3://`` URI (downloaded to a local cache first). The demo's GGUF model is converted to such a
folder by ``demo.model``.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from pathlib import Path

from core import storage
from schemas.storage import StorageSettings


def local_model_dir(
    uri: str, settings: StorageSettings | None = None, cache: Path | None = None
) -> Path:
    """A local folder holding the model or tokenizer at ``uri``; S3 is downloaded to a cache
    keyed by the URI, written under a temporary name and renamed when complete."""
    loc = storage.resolve(uri, settings)
    if loc.is_local:
        return Path(loc.path)
    cache = cache or Path(tempfile.gettempdir()) / "flywheel-model-cache"
    target = cache / hashlib.sha256(loc.uri.encode()).hexdigest()[:24]
    if target.is_dir():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".download-", dir=cache))
    storage.download_dir(loc, tmp)
    try:
        tmp.rename(target)
    except OSError:  # another process finished the same download first
        shutil.rmtree(tmp, ignore_errors=True)
    return target
