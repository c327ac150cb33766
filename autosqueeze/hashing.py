"""SHA-256 of files, read in 4 MiB chunks: the one helper the saved folder's checksum, the
base model's hash and the teacher's data and file digests use."""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

CHUNK = 1 << 22


def update_with_file(h: Any, path: str | Path) -> None:
    """Feed the bytes of the file ``path`` into the hash object ``h``."""
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            h.update(chunk)


def file_sha256(path: str | Path) -> str:
    """The SHA-256 of the file ``path``, in hex (64 digits)."""
    h = hashlib.sha256()
    update_with_file(h, path)
    return h.hexdigest()
