"""Tokenizers: train a byte-level BPE, load an existing Hugging Face tokenizer, save, hash.

Hot paths (ingest workers) use the fast ``tokenizers.Tokenizer`` directly; the Hugging Face
wrapper (``PreTrainedTokenizerFast``) is only built to write a folder that
``AutoTokenizer.from_pretrained`` loads, with the special tokens recorded.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from core import storage

# The files of a Hugging Face model folder that make up its tokenizer (chat template included).
TOKENIZER_FILES = ("tokenizer", "special_tokens", "chat_template", "vocab", "merges")
EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"


@dataclass(frozen=True)
class TokenizerBundle:
    """A fast tokenizer plus the special token ids packing needs."""

    tokenizer: Tokenizer
    eos_token_id: int
    pad_token_id: int

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.tokenizer.to_str().encode()).hexdigest()

    def encode_batch(self, texts: list[str], parse_special: bool = False) -> list[list[int]]:
        """Token ids without added special tokens (packing adds EOS itself).

        By default special-token strings inside the data (a literal "<|endoftext|>") are
        encoded as plain text: raw data must never forge document boundaries or chat turns.
        ``parse_special`` keeps them special, for text our own chat template rendered.
        """
        self.tokenizer.encode_special_tokens = not parse_special
        return [e.ids for e in self.tokenizer.encode_batch(texts, add_special_tokens=False)]


def train_bpe(texts: Iterable[str], vocab_size: int, min_frequency: int = 2) -> TokenizerBundle:
    """Train a byte-level BPE (GPT-2 style) on ``texts``; deterministic for the same input."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[EOS_TOKEN, PAD_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_batched(texts, 1000), trainer=trainer)
    return TokenizerBundle(tok, tok.token_to_id(EOS_TOKEN), tok.token_to_id(PAD_TOKEN))


def _batched(texts: Iterable[str], size: int) -> Iterator[list[str]]:
    batch: list[str] = []
    for text in texts:
        batch.append(text)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def save_hf_folder(bundle: TokenizerBundle, folder: Path) -> None:
    """Write a folder that ``AutoTokenizer.from_pretrained`` loads, special tokens set."""
    from transformers import PreTrainedTokenizerFast  # heavy import, only needed here

    eos = bundle.tokenizer.id_to_token(bundle.eos_token_id)
    pad = bundle.tokenizer.id_to_token(bundle.pad_token_id)
    hf = PreTrainedTokenizerFast(
        tokenizer_object=bundle.tokenizer, eos_token=eos, bos_token=eos, pad_token=pad
    )
    hf.save_pretrained(str(folder))


def load_hf_folder(folder: Path) -> TokenizerBundle:
    """Load a Hugging Face tokenizer folder (``tokenizer.json`` + ``tokenizer_config.json``)."""
    folder = Path(folder)
    tok_file = folder / "tokenizer.json"
    if not tok_file.is_file():
        raise FileNotFoundError(
            f"{folder} has no tokenizer.json: point tokenizer.uri at a Hugging Face tokenizer "
            "folder saved with a fast tokenizer (save_pretrained writes one)"
        )
    tok = Tokenizer.from_file(str(tok_file))
    eos_id, pad_id = _special_ids(tok, _read_json(folder / "tokenizer_config.json"))
    return TokenizerBundle(tok, eos_id, pad_id)


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def _special_ids(tok: Tokenizer, config: dict) -> tuple[int, int]:
    eos = _token_str(config.get("eos_token")) or EOS_TOKEN
    eos_id = tok.token_to_id(eos)
    if eos_id is None:
        raise ValueError(
            f"the tokenizer has no EOS token ({eos!r}); set eos_token in tokenizer_config.json"
        )
    pad = _token_str(config.get("pad_token"))
    pad_id = tok.token_to_id(pad) if pad else None
    return eos_id, eos_id if pad_id is None else pad_id


def _token_str(value: object) -> str | None:
    if isinstance(value, dict):  # AddedToken serialised as a dict
        return value.get("content")
    return value if isinstance(value, str) else None


def load_tokenizer(uri: str, settings: storage.StorageSettings | None = None) -> TokenizerBundle:
    """Load a tokenizer folder from a path, ``file://`` or ``s3://`` URI."""
    loc = storage.resolve(uri, settings)
    if loc.is_local:
        return load_hf_folder(Path(loc.path))
    with tempfile.TemporaryDirectory() as tmp:
        return load_hf_folder(storage.download_dir(loc, Path(tmp)))


def tokenizer_files(folder: storage.Location) -> dict[str, bytes]:
    """The tokenizer files of a model (or tokenizer) folder, by relative path."""
    return {
        e.relpath: storage.read_bytes(e.location)
        for e in storage.list_files(folder, "*")
        if e.relpath.startswith(TOKENIZER_FILES)
    }
