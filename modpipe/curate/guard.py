"""Guarded access to input files: what may be opened, and caps on what a file may cost.

Every input a user hands in (the corpus, the man root, later task files and prediction inputs) is opened here:

- only regular files are opened: a fifo, socket or device is refused from its ``stat`` (never opened: opening a
  fifo blocks), and the open itself is non-blocking and re-checked with ``fstat`` (a file swapped for a fifo
  after the check is refused too);
- a local file found under a configured folder must resolve (symlinks followed) inside one of the configured
  roots (``outside_root`` otherwise); a path the user configured is itself a root;
- per file (``Limits``, from ``corpus.*``): at most ``max_file_bytes`` stored bytes, at most ``read_timeout_s``
  seconds spent waiting on the file (the open and every read, summed; each one runs on a reading thread and is
  abandoned when the time is up, so a read that never returns costs ``read_timeout_s``, not the stage), at most
  ``max_decompressed_bytes`` decompressed bytes (.gz/.zst, and a Parquet file's text) and a decompressed/stored
  ratio of at most ``max_compression_ratio`` (checked once ``RATIO_MIN_BYTES`` were produced).

Not covered: listing a folder (``os.walk``/``fsspec.find``) and the ``stat`` of each listed file run without a
deadline (the ``stat`` and open when a file is read are timed), and a read abandoned after its timeout keeps its
thread (and the file handle, never closed here) until the operating system returns it.
A refusal is ``Refused(reason, detail)``; the readers turn it into a quarantine row.
"""

from __future__ import annotations

import io
import os
import stat
import threading
import time
from dataclasses import dataclass
from typing import Any, BinaryIO, Callable, Iterator

CHUNK = 1 << 20
"""Bytes per read from a file."""
PIECE = 1 << 14
"""Most bytes one read of a decompressor may produce: a cap is noticed within this many bytes of it."""
RATIO_MIN_BYTES = 1 << 20
"""The compression ratio is checked once a file produced this many bytes (small files compress unevenly)."""


@dataclass(frozen=True)
class Limits:
    """Caps per input file (see the module docstring); ``None`` turns one off (modpipe's own raw parts)."""

    max_file_bytes: int | None = 16 << 30
    read_timeout_s: float | None = 600.0
    max_decompressed_bytes: int | None = 64 << 30
    max_compression_ratio: float | None = 100.0


UNLIMITED = Limits(None, None, None, None)
"""For modpipe's own files (raw parts in the run dir)."""


class Refused(Exception):
    """A file refused before or while it is read: ``reason`` is a quarantine reason code."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


class Meter:
    """One file's counters against its ``Limits``: stored bytes read, bytes produced, seconds waited."""

    def __init__(self, limits: Limits, stored_size: int | None = None):
        self.limits = limits
        self.stored_size = stored_size
        self.stored = 0
        self.produced = 0
        self.waited = 0.0
        self.timed_out = False

    def call(self, fn: Callable[..., Any], *args) -> Any:
        """``fn(*args)`` within the file's remaining read time (on the reading thread when there is a limit)."""
        budget = self.limits.read_timeout_s
        if budget is None:
            return fn(*args)
        left = budget - self.waited
        if left <= 0:
            raise Refused("read_timeout", f"more than read_timeout_s={budget} s spent reading")
        t = time.monotonic()
        result = _in_thread(fn, args, left)
        self.waited += time.monotonic() - t
        if result is _TIMED_OUT:
            self.timed_out = True  # the file is abandoned to the read still running: never closed here
            raise Refused("read_timeout", f"a read did not return within read_timeout_s={budget} s")
        return result

    def add_stored(self, n: int) -> None:
        self.stored += n
        cap = self.limits.max_file_bytes
        if cap is not None and self.stored > cap:
            raise Refused("file_too_large", f"more than max_file_bytes={cap} bytes")

    def add_produced(self, n: int) -> None:
        """``n`` more decompressed/materialised bytes; refuses past the size or the ratio cap."""
        self.produced += n
        cap, ratio = self.limits.max_decompressed_bytes, self.limits.max_compression_ratio
        if cap is not None and self.produced > cap:
            raise Refused("decompressed_too_large", f"more than max_decompressed_bytes={cap} bytes")
        stored = max(self.stored, self.stored_size or 0, 1)
        if ratio is not None and self.produced >= RATIO_MIN_BYTES and self.produced / stored > ratio:
            raise Refused("compression_ratio", f"{self.produced} bytes from {stored} stored bytes "
                                               f"(> max_compression_ratio={ratio})")


_TIMED_OUT = object()


class _Worker:
    """A daemon thread that runs the guarded calls one after another (a thread per call costs ~0.5 ms to start on
    a busy machine, a hand-over ~40 us).  A call that does not return in time leaves its worker behind: the next
    call gets a new one."""

    def __init__(self) -> None:
        import queue

        self.pid = os.getpid()  # a forked child has no thread behind this object: it starts its own
        self.jobs: Any = queue.SimpleQueue()
        threading.Thread(target=self._loop, name="modpipe-read", daemon=True).start()

    def _loop(self) -> None:
        while True:
            fn, args, box, done = self.jobs.get()
            try:
                box.append((True, fn(*args)))
            except BaseException as e:  # noqa: BLE001 - handed to the caller's thread
                box.append((False, e))
            done.set()


_worker: _Worker | None = None
_worker_lock = threading.Lock()


def _in_thread(fn: Callable[..., Any], args: tuple, timeout: float) -> Any:
    """``fn(*args)`` on the reading worker; ``_TIMED_OUT`` if it has not returned after ``timeout`` seconds (a
    blocked read cannot be interrupted: the worker is abandoned to it)."""
    global _worker
    with _worker_lock:
        if _worker is None or _worker.pid != os.getpid():
            _worker = _Worker()
        worker = _worker
    box: list = []
    done = threading.Event()
    worker.jobs.put((fn, args, box, done))
    if not done.wait(timeout):
        with _worker_lock:
            if _worker is worker:
                _worker = None
        return _TIMED_OUT
    ok, value = box[0]
    if not ok:
        raise value
    return value


class Metered(io.RawIOBase):
    """A binary file whose reads are counted (``max_file_bytes``) and timed (``read_timeout_s``)."""

    def __init__(self, fh: BinaryIO, meter: Meter):
        self._fh, self.meter = fh, meter

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return self._fh.seekable()

    def seek(self, pos: int, whence: int = 0) -> int:
        return self._fh.seek(pos, whence)

    def tell(self) -> int:
        return self._fh.tell()

    def readinto(self, b) -> int:
        data = self.meter.call(self._fh.read, len(b))
        self.meter.add_stored(len(data))
        b[:len(data)] = data
        return len(data)

    def close(self) -> None:
        if not self.closed and not self.meter.timed_out:
            try:
                self.meter.call(self._fh.close)
            except Refused:
                pass
        super().close()


class Produced(io.RawIOBase):
    """A decompressed stream whose output is counted (``max_decompressed_bytes``, ``max_compression_ratio``);
    each read returns what one step of the decompressor gave, so the lines before a corrupt spot are read."""

    def __init__(self, fh: BinaryIO, meter: Meter):
        self._fh, self.meter = fh, meter

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        cap = self.meter.limits.max_decompressed_bytes
        room = PIECE if cap is None else cap - self.meter.produced  # up to the cap, then one byte to see past it
        n = min(len(b), PIECE, room if room > 0 else 1)
        data = self._fh.read1(n) if hasattr(self._fh, "read1") else self._fh.read(n)  # one piece: what came
        self.meter.add_produced(len(data))
        b[:len(data)] = data
        return len(data)


# --- what may be opened ----------------------------------------------------------------------------------------


def inside(real: str, roots: tuple[str, ...]) -> bool:
    """Whether the resolved path ``real`` is one of ``roots`` or below one."""
    return any(real == r or real.startswith(r.rstrip("/") + "/") for r in roots)


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "a named pipe"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character "
                       "device"), (stat.S_ISBLK, "a block device"), (stat.S_ISDIR, "a folder")):
        if test(mode):
            return name
    return "not a regular file"


def check_local(path: str, roots: tuple[str, ...], limits: Limits) -> tuple[str, str, int] | None:
    """Why the local ``path`` may not be read: (reason, detail, size) or None.  Follows symlinks, opens nothing;
    ``roots`` empty: no root rule (a path given on its own)."""
    real = os.path.realpath(path)
    if roots and not inside(real, roots):
        return "outside_root", f"resolves to {real}, outside the configured roots", 0
    st = os.stat(real)
    if not stat.S_ISREG(st.st_mode):
        return "not_regular_file", f"{_kind(st.st_mode)}: only regular files are read", 0
    if limits.max_file_bytes is not None and st.st_size > limits.max_file_bytes:
        return "file_too_large", f"{st.st_size} bytes > max_file_bytes={limits.max_file_bytes}", st.st_size
    return None


def _open_local(path: str, roots: tuple[str, ...], limits: Limits) -> tuple[BinaryIO, int]:
    why = check_local(path, roots, limits)
    if why is not None:
        raise Refused(*why[:2])
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(os.path.realpath(path), flags)  # non-blocking: a fifo put there since the check does not block
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise Refused("not_regular_file", f"{_kind(st.st_mode)}: only regular files are read")
    return os.fdopen(fd, "rb", buffering=0), st.st_size


def _open_remote(url: str) -> tuple[BinaryIO, int | None]:
    import fsspec

    of = fsspec.open(url, "rb")
    info = of.fs.info(of.path)
    if info.get("type") not in (None, "file"):
        raise Refused("not_regular_file", f"{info.get('type')}: only regular files are read")
    return of.open(), info.get("size")


def open_file(url: str, roots: tuple[str, ...], limits: Limits) -> BinaryIO:
    """``url`` (a local path or an fsspec URL) opened read-only for reading in ``CHUNK`` blocks, metered: the
    returned buffered stream's ``.raw.meter`` holds the counters.  Raises ``Refused`` (or ``OSError``)."""
    meter = Meter(limits)
    fh, size = meter.call(_open_remote if "://" in url else _open_local,
                          *((url,) if "://" in url else (url, roots, limits)))
    meter.stored_size = size
    if size is not None and limits.max_file_bytes is not None and size > limits.max_file_bytes:
        fh.close()
        raise Refused("file_too_large", f"{size} bytes > max_file_bytes={limits.max_file_bytes}")
    return io.BufferedReader(Metered(fh, meter), CHUNK)


class ZstdStream(io.RawIOBase):
    """Zstandard frames (one or several, concatenated; skippable frames skipped) as a RawIOBase, fed to the
    decompressor one block at a time, found from the block headers: each call produces at most one block
    (128 KiB), whatever the compression ratio (one call on a 4 KB slice of a zstd bomb returns ~130 MB).  A stream
    that stops inside a frame raises EOFError, like gzip (zstandard's own stream reader ends silently)."""

    def __init__(self, fh: BinaryIO):
        import zstandard

        self._fh = fh
        self._dctx = zstandard.ZstdDecompressor()
        self._pieces = self._walk()
        self._buf = b""

    def readable(self) -> bool:
        return True

    def _exact(self, n: int) -> bytes:
        data = self._fh.read(n)
        while len(data) < n and (more := self._fh.read(n - len(data))):
            data += more
        if len(data) < n:
            raise EOFError("zstd stream ended inside a frame (truncated file)")
        return data

    def _frame(self, magic: bytes) -> Iterator[tuple[Any, bytes]]:
        """(decompressor, bytes to feed) for the header, each block, and the checksum of one frame."""
        fhd = self._exact(1)[0]
        single = (fhd >> 5) & 1
        size = (1 - single) + (0, 1, 2, 4)[fhd & 3] + (single, 2, 4, 8)[fhd >> 6]  # window, dict id, content size
        obj = self._dctx.decompressobj()
        yield obj, magic + bytes([fhd]) + self._exact(size)
        while True:
            head = self._exact(3)
            h = int.from_bytes(head, "little")
            yield obj, head + self._exact(1 if (h >> 1) & 3 == 1 else h >> 3)  # an RLE block holds one byte
            if h & 1:  # the last block
                break
        if (fhd >> 2) & 1:
            yield obj, self._exact(4)

    def _walk(self) -> Iterator[tuple[Any, bytes]]:
        import zstandard

        while magic := self._fh.read(4):
            if len(magic) < 4:
                raise EOFError("zstd stream ended inside a frame header (truncated file)")
            m = int.from_bytes(magic, "little")
            if 0x184D2A50 <= m <= 0x184D2A5F:  # a skippable frame: its size, then that many bytes
                left = int.from_bytes(self._exact(4), "little")
                while left:
                    left -= len(self._exact(min(left, CHUNK)))
            elif m == 0xFD2FB528:
                yield from self._frame(magic)
            else:
                raise zstandard.ZstdError(f"not a zstd frame (magic {m:#x})")

    def readinto(self, b) -> int:
        while not self._buf:
            piece = next(self._pieces, None)
            if piece is None:
                return 0
            obj, data = piece
            self._buf = obj.decompress(data)
        n = min(len(b), len(self._buf))
        b[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        return n


def decompressed(fh: BinaryIO, name: str, meter: Meter) -> BinaryIO:
    """The decompressed stream of a .gz/.zst file (by name; others as they are), metered."""
    import gzip

    if name.endswith(".gz"):
        return io.BufferedReader(Produced(gzip.GzipFile(fileobj=fh, mode="rb"), meter), CHUNK)
    if name.endswith(".zst"):
        return io.BufferedReader(Produced(ZstdStream(fh), meter), CHUNK)
    return fh
