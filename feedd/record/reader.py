"""Reading recording files: zstd, gzip or plain JSON lines, whatever their name says.

A file is opened by :class:`RecordingFile`, which reads its header at once (a file without a
valid one is not a recording: :class:`RecordingError`). Its lines then come from
:meth:`RecordingFile.lines`, which never raises: a truncated tail (a crash, a file still being
written) ends the lines quietly, noted in :attr:`RecordingFile.problem` as ``truncated``; a
damaged stretch (a decompression error, a line that is not JSON) ends them there, noted as
``damaged``. What was read before either stays good.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

import orjson
import zstandard

from feedd.record import format as fmt

#: bytes read at once: plain text, and compressed (a compressed chunk decompresses to 10-30
#: times that; chunks that stay well within the CPU's cache made reading twice as fast as 1 MiB)
CHUNK = 1 << 18
COMPRESSED_CHUNK = 1 << 14
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_GZIP_MAGIC = b"\x1f\x8b"


class RecordingError(Exception):
    """A file that cannot be read as a recording (the message names it and says why)."""


def expand(paths: Iterable[str]) -> list[Path]:
    """Files named, and the recording files under directories named (sorted)."""
    found: list[Path] = []
    suffixes = tuple(fmt.SUFFIXES.values())
    for name in paths:
        path = Path(name)
        if path.is_dir():
            found.extend(sorted(p for p in path.rglob("*") if p.is_file() and p.name.endswith(suffixes)))
        else:
            found.append(path)
    return found


class _Chunks:
    """Decompressed chunks of one file; ``problem`` says how it ended early, if it did."""

    def __init__(self, handle: BinaryIO) -> None:
        self._handle = handle
        self.problem: str | None = None

    def __iter__(self) -> Iterator[bytes]:
        handle = self._handle
        first = handle.read(4)
        if first.startswith(_ZSTD_MAGIC):
            yield from self._zstd(first + handle.read(COMPRESSED_CHUNK))
        elif first.startswith(_GZIP_MAGIC):
            yield from self._gzip(first + handle.read(COMPRESSED_CHUNK))
        else:
            while first:
                yield first
                first = handle.read(CHUNK)

    def _zstd(self, data: bytes) -> Iterator[bytes]:
        handle = self._handle
        decompressor = zstandard.ZstdDecompressor()
        d = decompressor.decompressobj()
        while data:
            try:
                out = d.decompress(data)
            except zstandard.ZstdError as exc:
                self.problem = f"damaged (zstd: {exc})"
                return
            if out:
                yield out
            if d.eof:
                data = d.unused_data
                d = decompressor.decompressobj()
                if data:
                    continue
                data = handle.read(COMPRESSED_CHUNK)
                if not data:
                    return  # ended on a frame's end: complete
                continue
            data = handle.read(COMPRESSED_CHUNK)
        self.problem = "truncated (an unfinished zstd frame)"

    def _gzip(self, data: bytes) -> Iterator[bytes]:
        handle = self._handle
        d = zlib.decompressobj(31)
        while data:
            try:
                out = d.decompress(data)
            except zlib.error as exc:
                self.problem = f"damaged (gzip: {exc})"
                return
            if out:
                yield out
            if d.eof:
                data = d.unused_data or handle.read(COMPRESSED_CHUNK)
                if not data:
                    return
                d = zlib.decompressobj(31)
                continue
            data = handle.read(COMPRESSED_CHUNK)
        self.problem = "truncated (an unfinished gzip stream)"


class RecordingFile:
    """One recording file: its header now, its lines on demand."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.problem: str | None = None
        try:
            self._handle: BinaryIO = open(self.path, "rb")  # noqa: SIM115 (closed by lines())
        except OSError as exc:
            raise RecordingError(f"{self.path}: cannot open: {exc.strerror or exc}") from None
        self._chunks = _Chunks(self._handle)
        self._iter = iter(self._chunks)
        self._rest = b""
        try:
            line = self._first_line()
            header = orjson.loads(line)
        except orjson.JSONDecodeError:
            self._handle.close()
            raise RecordingError(f"{self.path}: not a feedd recording (its first line is not JSON)") from None
        except RecordingError:
            self._handle.close()
            raise
        if not isinstance(header, dict) or header.get(fmt.MARKER) is None:
            self._handle.close()
            raise RecordingError(f"{self.path}: not a feedd recording (no header line)")
        if header.get(fmt.MARKER) != fmt.VERSION:
            self._handle.close()
            raise RecordingError(f"{self.path}: recording format version {header.get(fmt.MARKER)!r} "
                                 f"(this feedd reads version {fmt.VERSION})")
        self.header: dict[str, Any] = header
        try:
            self.venue = str(header["venue"])
            self.connection = str(header["connection"])
            self.run = str(header["run"])
            self.part = int(header["part"])
            self.daemon = self.run.rpartition("/")[0] or self.run
        except (KeyError, TypeError, ValueError):
            self._handle.close()
            raise RecordingError(f"{self.path}: header lacks venue, connection, run or part") from None

    def _first_line(self) -> bytes:
        buffer = b""
        for chunk in self._iter:
            buffer += chunk
            end = buffer.find(b"\n")
            if end >= 0:
                self._rest = buffer[end + 1:]
                return buffer[:end]
            if len(buffer) > 16 * CHUNK:
                break
        raise RecordingError(f"{self.path}: not a feedd recording "
                             f"({self._chunks.problem or 'no complete header line'})")

    def lines(self) -> Iterator[dict[str, Any]]:
        """The lines after the header, parsed; stops at a truncated or damaged stretch (see
        :attr:`problem`). Closes the file when done."""
        for parsed in self.parsed():
            yield from parsed

    def parsed(self) -> Iterator[list[dict[str, Any]]]:
        """:meth:`lines` a decompressed chunk's worth at a time (a generator step per chunk, not
        per line: replay's hot loop)."""
        loads = orjson.loads
        rest = b""
        try:
            for chunk in self._iter_chunks():
                data = rest + chunk if rest else chunk
                end = data.rfind(b"\n")
                if end < 0:
                    rest = data
                    continue
                rest = data[end + 1:]
                out: list[dict[str, Any]] = []
                keep = out.append
                for raw in data[:end].split(b"\n"):
                    try:
                        obj = loads(raw)
                    except orjson.JSONDecodeError:
                        self.problem = "damaged (a line that is not JSON)"
                        yield out
                        return
                    if type(obj) is not dict or "t" not in obj:
                        self.problem = "damaged (a line without its time)"
                        yield out
                        return
                    keep(obj)
                yield out
            self.problem = self._chunks.problem
            if rest.strip() and self.problem is None:
                self.problem = "truncated (its last line is incomplete)"
        finally:
            self._handle.close()

    def _iter_chunks(self) -> Iterator[bytes]:
        if self._rest:
            yield self._rest
        yield from self._iter

    def close(self) -> None:
        self._handle.close()
