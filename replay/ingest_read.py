"""Reading an interaction-log file as numbered lines, keeping all it can of a damaged one.

`open_log` opens a regular file (a folder, a FIFO, a socket or a device is refused
with a message saying which, without blocking on it); `LineReader` yields its non-blank
lines with their numbers. A file starting with the gzip magic bytes is decompressed
(several members, zero padding after them, as gzip writes them). Lines end with LF, CRLF
or a lone CR (a JSON string cannot hold a raw CR); a UTF-8 byte order mark at the start
of the file is dropped. A non-blank line longer than the limit is yielded as None
without being held in memory; blank lines (whitespace only) are skipped whatever their
length, a run of empty ones at the speed of a byte scan.

When the file cannot be read further (a read error, a truncated or corrupt gzip
stream), `ReadFailure` is raised after every line completed before the damage has been
yielded; `LineReader.number` then says how many lines were complete. It does not parse
lines (`replay.ingest_json`, `replay.records`) or store anything.
"""

from __future__ import annotations

import os
import re
import stat
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from replay.ingest_json import BOM

GZIP_MAGIC = b"\x1f\x8b"
_PLAIN_CHUNK = 256 * 1024
_GZIP_IN_CHUNK = 64 * 1024
_GZIP_OUT_CHUNK = 1024 * 1024
# Not what bytes.strip() strips; CR is not among them, as it is turned into LF first.
_NON_BLANK = re.compile(rb"[^ \t\n\x0b\x0c]")

ProgressFn = Callable[[int], None]
"""Called with the number of (compressed) bytes of the file read so far."""


class ReadFailure(Exception):
    """The file cannot be read (any further); the message says why."""


def _kind_problem(mode: int) -> str | None:
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        return "is a folder, not a file"
    if stat.S_ISFIFO(mode):
        return "is a named pipe (FIFO), not a regular file"
    if stat.S_ISSOCK(mode):
        return "is a socket, not a regular file"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "is a device, not a regular file"
    return "is not a regular file"


def file_problem(path: Path) -> str | None:
    """Why `path` cannot be ingested ("no such file", "is a folder, not a file", ...), or
    None when it is a readable regular file. Opens nothing, so never blocks."""
    try:
        st = path.stat()
    except FileNotFoundError:
        if path.is_symlink():
            return "is a symbolic link to a missing file"
        return "no such file"
    except NotADirectoryError:
        return "no such file"
    except OSError as exc:
        return f"cannot be read: {exc.strerror or exc}"
    except ValueError as exc:  # e.g. an embedded NUL
        return f"is not a usable path: {exc}"
    problem = _kind_problem(st.st_mode)
    if problem is None and not os.access(path, os.R_OK):
        return "cannot be read: permission denied"
    return problem


def open_log(path: Path) -> tuple[BinaryIO, int]:
    """(the open file, its size in bytes); ReadFailure when it is no readable regular file.

    Opened non-blocking, so that a FIFO put in the file's place is refused, not waited on.
    """
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise ReadFailure("no such file") from None
    except OSError as exc:
        raise ReadFailure(f"cannot open it: {exc.strerror or exc}") from None
    except ValueError as exc:  # e.g. an embedded NUL
        raise ReadFailure(f"not a usable path: {exc}") from None
    try:
        st = os.fstat(fd)
        problem = _kind_problem(st.st_mode)
        if problem is not None:
            raise ReadFailure(problem)
        return os.fdopen(fd, "rb", buffering=0), st.st_size
    except BaseException:
        os.close(fd)
        raise


def _read(fh: BinaryIO, size: int) -> bytes:
    try:
        return fh.read(size) or b""
    except OSError as exc:
        raise ReadFailure(f"read error: {exc.strerror or exc}") from None


def _chunks(fh: BinaryIO, progress: ProgressFn | None) -> Iterator[bytes]:
    """The file's bytes, decompressed when it is gzip, in chunks of bounded size."""
    done = 0

    def read(size: int) -> bytes:
        nonlocal done
        data = _read(fh, size)
        done += len(data)
        if progress is not None and data:
            progress(done)
        return data

    first = read(_PLAIN_CHUNK)
    while len(first) < 2 and first:  # too short to tell yet
        more = read(_PLAIN_CHUNK)
        if not more:
            break
        first += more
    if first.startswith(GZIP_MAGIC):
        yield from _inflate(first, read)
        return
    while first:
        yield first
        first = read(_PLAIN_CHUNK)


def _inflate(data: bytes, read: Callable[[int], bytes]) -> Iterator[bytes]:
    """Decompress gzip members from `data` and then `read`; on damage, yield everything that
    decompresses before it, then raise ReadFailure."""
    inflater = zlib.decompressobj(31)
    drained = True  # whether the inflater holds no output beyond what it returned
    while True:
        if not data and drained:
            data = read(_GZIP_IN_CHUNK)
            if not data:
                if inflater.eof:
                    return
                raise ReadFailure("the gzip data ends early (the file is truncated)")
        if inflater.eof:
            data = data.lstrip(b"\x00")  # zero padding after a member
            if not data:
                continue
            if len(data) < 2:
                data += read(_GZIP_IN_CHUNK)
            if not data.startswith(GZIP_MAGIC):
                raise ReadFailure("the data after the end of the gzip stream is not gzip")
            inflater = zlib.decompressobj(31)
        before = inflater.copy()
        try:
            out = inflater.decompress(data, _GZIP_OUT_CHUNK)
        except zlib.error as exc:
            yield from _salvage(before, data)
            raise ReadFailure(f"the gzip data is damaged ({_zlib_reason(exc)})") from None
        drained = inflater.eof or len(out) < _GZIP_OUT_CHUNK
        data = inflater.unused_data if inflater.eof else inflater.unconsumed_tail
        if out:
            yield out


def _salvage(inflater: zlib._Decompress, data: bytes) -> Iterator[bytes]:
    """What `data` decompresses to up to the byte where it fails, fed a byte at a time."""
    out = bytearray()
    for i in range(len(data)):
        try:
            out += inflater.decompress(data[i : i + 1])
        except zlib.error:
            break
        if len(out) >= _GZIP_OUT_CHUNK:
            yield bytes(out)
            out.clear()
        if inflater.eof:
            break
    if out:
        yield bytes(out)


def _zlib_reason(exc: zlib.error) -> str:
    text = str(exc)
    return text.split(": ", 1)[1] if ": " in text else text


def _universal_newlines(chunks: Iterator[bytes]) -> Iterator[bytes]:
    """The chunks with CRLF and lone CR turned into LF (a CRLF split across two chunks
    stays one line end)."""
    carry = b""
    try:
        for chunk in chunks:
            if carry:
                chunk, carry = carry + chunk, b""
            if b"\r" in chunk:
                if chunk.endswith(b"\r"):
                    chunk, carry = chunk[:-1], b"\r"
                chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
            if chunk:
                yield chunk
    except ReadFailure:
        if carry:  # the CR that ended the data read before the damage ends its line
            yield b"\n"
        raise
    if carry:
        yield b"\n"


class LineReader:
    """Iterate (line number, bytes without the line end) over the non-blank lines of a file;
    None instead of the bytes for a line longer than `max_bytes` (a blank line is skipped
    whatever its length).

    `number` is how many lines (blank ones included) have been read completely.
    """

    def __init__(self, fh: BinaryIO, max_bytes: int, progress: ProgressFn | None = None):
        self.fh = fh
        self.max_bytes = max_bytes
        self.progress = progress
        self.number = 0
        self._partial = bytearray()  # the start of a line that runs past the chunk read
        self._over: str | None = None  # "blank": over the limit, blank so far; "skip": refused

    def _line(self, line: bytes) -> tuple[int, bytes | None] | None:
        """The item for a complete line (its number already counted); None when blank."""
        if _NON_BLANK.search(line) is None:
            return None
        if len(line) > self.max_bytes:
            return self.number, None
        if self.number == 1 and line.startswith(BOM):
            line = line[len(BOM) :]
            if _NON_BLANK.search(line) is None:
                return None
        return self.number, line

    def _grow(self, piece: bytes) -> tuple[int, None] | None:
        """Add `piece` to the unfinished line; the over-limit item when it is refused now."""
        if self._over == "skip":
            return None
        if self._over == "blank":
            if _NON_BLANK.search(piece) is None:
                return None
        else:
            self._partial += piece
            if len(self._partial) <= self.max_bytes:
                return None
            blank = _NON_BLANK.search(self._partial) is None
            self._partial.clear()
            if blank:
                self._over = "blank"
                return None
        self._over = "skip"
        return self.number + 1, None

    def _end_line(self) -> tuple[int, bytes | None] | None:
        """The unfinished line has ended: its item (None: blank or already refused)."""
        self.number += 1
        if self._over is not None:
            self._over = None
            return None
        line = bytes(self._partial)
        self._partial.clear()
        return self._line(line)

    def __iter__(self) -> Iterator[tuple[int, bytes | None]]:
        for data in _universal_newlines(_chunks(self.fh, self.progress)):
            pos, end = 0, len(data)
            if self._partial or self._over is not None:
                nl = data.find(b"\n")
                item = self._grow(data if nl < 0 else data[:nl])
                if item is not None:
                    yield item
                if nl < 0:
                    continue
                item = self._end_line()
                if item is not None:
                    yield item
                pos = nl + 1
            if pos < end and not data.translate(None, b"\n"):
                # Nothing but line ends (a file of newlines): count them at once.
                self.number += end - pos
                continue
            while pos < end:
                found = _NON_BLANK.search(data, pos)
                if found is None:  # blank lines, then maybe the start of one
                    last = data.rfind(b"\n", pos)
                    if last >= pos:
                        self.number += data.count(b"\n", pos, last + 1)
                        pos = last + 1
                    item = self._grow(data[pos:])
                    if item is not None:
                        yield item
                    break
                start = data.rfind(b"\n", pos, found.start()) + 1 or pos
                self.number += data.count(b"\n", pos, start)
                nl = data.find(b"\n", found.start())
                if nl < 0:  # the line goes on in the next chunk
                    item = self._grow(data[start:])
                    if item is not None:
                        yield item
                    break
                self.number += 1
                pos = nl + 1
                item = self._line(data[start:nl])
                if item is not None:
                    yield item
        if self._partial or self._over is not None:
            item = self._end_line()
            if item is not None:
                yield item
