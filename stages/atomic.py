"""Small file-system helpers for "nothing half-written is ever used".

`write_atomic` writes to a temporary name beside the target, fsyncs, and renames into
place; `replace_dir` puts a finished folder in place of another; `fsync_dir` makes a rename
durable; `sha256_file` hashes a file in chunks. Every
package above `stages/` (judges, evals, daemon) uses these rather than its own copy.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import uuid
from pathlib import Path


def sha256_file(path: Path) -> str:
    """The sha256 of a file's bytes, as hex."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fsync_dir(path: Path) -> None:
    """fsync a folder, so that renames and new files in it survive a crash."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes | str, mode: int | None = None) -> Path:
    """Write `data` to `path` through a temporary file and a rename; readers see the old
    file or the whole new one, never a part. `mode`: the file's permission bits (default:
    as the umask leaves them). Returns `path`."""
    raw = data.encode("utf-8") if isinstance(data, str) else data
    tmp = path.with_name(f".tmp-{path.name}-{uuid.uuid4().hex[:8]}")
    try:
        with tmp.open("wb") as fh:
            fh.write(raw)
            if mode is not None:
                os.fchmod(fh.fileno(), mode)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def replace_dir(finished: Path, target: Path) -> Path:
    """Move the finished folder `finished` onto `target` with `os.replace`; an existing
    `target` is moved aside first (a folder cannot replace a non-empty one) and deleted
    afterwards, so `target` holds the old folder or the whole new one. Returns `target`."""
    old = None
    if target.exists():
        old = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
        os.replace(target, old)
    os.replace(finished, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return target
