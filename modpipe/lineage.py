"""Fingerprints, digests, provenance, and content-addressed sub-directories.

The steps of the DAG are versioned and run by ``modpipe.executor``. Inside a step, ``StepDir`` keeps
content-addressed outputs that several versions of a step can share (a raw harvest, one task's module): the
fingerprint hashes what the content depends on; output is built in a temporary sibling and renamed on success, so
a directory that exists is complete; ``provenance.json`` in it says how it was made.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import subprocess
import time
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any, Iterator

PROVENANCE = "provenance.json"


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def fingerprint(*parts: Any, length: int = 12) -> str:
    """sha256 over canonical JSON of the parts, truncated for directory names."""
    return sha256_text(canonical_json(list(parts)))[:length]


def dir_digest(path: str | Path, pattern: str = "**/*") -> str:
    """sha256 over (relative path, file sha256) of every file under ``path`` matching ``pattern``."""
    root = Path(path)
    items = sorted((str(p.relative_to(root)), sha256_file(p)) for p in root.glob(pattern) if p.is_file())
    return sha256_text(canonical_json(items))


def git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
            cwd=Path(__file__).resolve().parent,
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def library_versions(names: tuple[str, ...] = (
    "modpipe", "torch", "ray", "deepspeed", "transformers", "peft", "tokenizers", "pyarrow",
    "great_expectations", "mlflow", "prefect",
)) -> dict[str, str]:
    out = {}
    for n in names:
        try:
            out[n] = metadata.version(n)
        except metadata.PackageNotFoundError:
            pass
    return out


class StepDir:
    """A content-addressed output directory ``<root>/<name>-<fp>`` (raw harvests, per-task modules).

    Safe under concurrency: each builder writes its own temp dir (named by host and pid) and renames it into
    place under a lock; when another builder finished first, its dir is kept and ours is dropped. A complete
    dir is never deleted or overwritten; temp dirs of builders that died on this host are removed.
    """

    def __init__(self, root: str | Path, name: str, fp: str):
        self.root = Path(root)
        self.name = name
        self.fp = fp
        self.path = self.root / f"{name}-{fp}"

    def done(self) -> bool:
        return (self.path / PROVENANCE).is_file()

    @contextmanager
    def _locked(self) -> Iterator[None]:
        import fcntl

        fd = os.open(self.root / f".{self.name}-{self.fp}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock

    def _remove_dead_temps(self) -> None:
        prefix = f".tmp-{self.name}-{self.fp}-{platform.node()}-"
        for tmp in self.root.glob(f"{prefix}*"):
            pid = tmp.name[len(prefix):].split("-")[0]
            if pid.isdigit() and not _alive(int(pid)):
                shutil.rmtree(tmp, ignore_errors=True)

    @contextmanager
    def building(self, config: Any = None, inputs: dict[str, Any] | None = None) -> Iterator[Path]:
        """Yield a temp dir to write into; on success write provenance and rename it into place."""
        self.root.mkdir(parents=True, exist_ok=True)
        with self._locked():
            self._remove_dead_temps()
        tmp = self.root / f".tmp-{self.name}-{self.fp}-{platform.node()}-{os.getpid()}-{os.urandom(4).hex()}"
        tmp.mkdir(parents=True)
        started = time.time()
        try:
            yield tmp
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        record = {
            "name": self.name,
            "fingerprint": self.fp,
            "config": config,
            "inputs": inputs or {},
            "git_commit": git_commit(),
            "versions": library_versions(),
            "host": platform.node(),
            "started": started,
            "seconds": round(time.time() - started, 3),
        }
        (tmp / PROVENANCE).write_text(json.dumps(record, indent=2, default=str))
        with self._locked():
            if self.done():  # another builder finished first: same inputs, so keep theirs
                shutil.rmtree(tmp, ignore_errors=True)
                return
            if self.path.exists():  # a dir without provenance: not a finished build; set it aside
                os.replace(self.path, self.root / f".incomplete-{self.name}-{self.fp}-{os.getpid()}")
            os.replace(tmp, self.path)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
