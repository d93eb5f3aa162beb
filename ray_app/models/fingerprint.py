"""A content fingerprint of a checkpoint or adapter folder, cheap enough for a 15 GB model.

Files up to 64 MiB are hashed whole (configs, tokenizers, adapters, small models); larger weight
files contribute their size plus the sha256 of their first and last 16 MiB. Any re-save, re-quantise
or different checkpoint changes it; it is the identity recorded in metrics and used to decide
whether finished work can be reused.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

WHOLE_FILE_LIMIT = 64 * 1024 * 1024
EDGE_BYTES = 16 * 1024 * 1024


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    size = path.stat().st_size
    with path.open("rb") as handle:
        if size <= WHOLE_FILE_LIMIT:
            for chunk in iter(lambda: handle.read(1024 * 1024), b""):
                digest.update(chunk)
        else:
            digest.update(str(size).encode())
            digest.update(handle.read(EDGE_BYTES))
            handle.seek(size - EDGE_BYTES)
            digest.update(handle.read(EDGE_BYTES))
    return digest.hexdigest()


def folder_fingerprint(folder: Path, skip: frozenset[str] = frozenset()) -> str:
    """sha256 over (relative path, file digest) of every file, in sorted order; hidden files and `skip`
    names skipped."""
    digest = hashlib.sha256()
    files = (p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".") and p.name not in skip)
    for path in sorted(files):
        digest.update(path.relative_to(folder).as_posix().encode() + b"\0" + _file_digest(path).encode() + b"\n")
    return digest.hexdigest()


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1024 * 1024), b""):
            digest.update(chunk)
    return digest.hexdigest()


def adapter_fingerprint(folder: Path) -> str:
    """An adapter folder's fingerprint without `training.json`, the run record that training updates
    after its own re-evaluation (the weights, config and tokenizer files are what answers depend on)."""
    return folder_fingerprint(folder, skip=frozenset({"training.json"}))
