"""The MLflow store behind the registry: one client per tracking URI, safe under concurrent publishers.

- ``Store(uri)``: ``client`` (tracking + registry on the same URI), ``writing()`` (an exclusive lock for stores
  that are a local SQLite file: MLflow creates a fresh SQLite schema with migrations that collide when several
  processes open a new store at once, and its version numbering reads then writes; other stores are servers that
  serialise themselves), ``retry(fn, ...)`` on transient errors (a locked database, a busy server).
- ``fetch(source, dest, expected)``: a private, verified local copy of an artifact dir (local stores: copied;
  remote ones: downloaded), built in a temp sibling and renamed, re-verified on every use.

Nothing here decides anything: publish, the ledger and the loaders call it.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import random
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Iterator
from urllib.parse import unquote, urlparse

log = logging.getLogger("modpipe.registry")

RETRIES = 8


class RegistryError(RuntimeError):
    """A registry lookup or integrity check that cannot be satisfied; the message says which and why."""


def default_cache() -> Path:
    return Path(os.environ.get("MODPIPE_CACHE") or Path.home() / ".cache" / "modpipe" / "registry")


def local_path(uri: str) -> Path | None:
    parsed = urlparse(uri)
    if parsed.scheme in ("", "file"):
        return Path(unquote(parsed.path))
    return None


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI (SQLAlchemy's form: ``sqlite:///relative.db``,
    ``sqlite:////absolute/path.db``), None for other stores. Not ``urlparse``: it reads ``//tmp/x`` as host ``tmp``."""
    if not uri.startswith("sqlite:///"):
        return None
    return Path(unquote(uri.removeprefix("sqlite:///").split("?", 1)[0]))


def _transient(err: BaseException) -> bool:
    text = f"{type(err).__name__}: {err}".lower()
    return any(s in text for s in ("database is locked", "database table is locked", "temporarily unavailable",
                                   "connection refused", "connection reset", "max retries exceeded",
                                   "remote end closed", "internal_error", "deadlock",
                                   # two writers setting the same alias at once on a server: the loser's insert
                                   # hits the primary key; setting it again is an update
                                   "unique constraint failed"))


class Store:
    """An MLflow tracking + registry URI and what publishers need around it."""

    def __init__(self, uri: str, cache_dir: str | Path | None = None):
        self.uri = uri
        self.sqlite = sqlite_path(uri)
        self.cache = Path(cache_dir) if cache_dir else default_cache()
        self._client = None

    @property
    def client(self):
        if self._client is None:
            from mlflow import MlflowClient

            if self.sqlite is not None:
                self.sqlite.parent.mkdir(parents=True, exist_ok=True)
                with self.writing():  # a fresh store's schema is created (migrated) by one process at a time
                    client = MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)
                    self.retry(client.search_registered_models, max_results=1)
                    self.retry(client.search_experiments, max_results=1)
                self._client = client
            else:
                self._client = MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)
        return self._client

    @contextlib.contextmanager
    def writing(self) -> Iterator[None]:
        """Exclusive for a local SQLite store (flock on ``<db>.lock``, released if the process dies); a no-op for
        servers. Re-entrant within a process."""
        if self.sqlite is None or getattr(self, "_held", 0):
            self._held = getattr(self, "_held", 0) + 1
            try:
                yield
            finally:
                self._held -= 1
            return
        lock = self.sqlite.with_name(self.sqlite.name + ".lock")
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            self._held = 1
            try:
                yield
            finally:
                self._held = 0
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def retry(self, fn: Callable[..., Any], *args, **kwargs) -> Any:
        for attempt in range(RETRIES):
            try:
                return fn(*args, **kwargs)
            except Exception as err:  # noqa: BLE001 - re-raised unless transient
                if attempt == RETRIES - 1 or not _transient(err):
                    raise
                delay = min(5.0, 0.1 * 2 ** attempt) * (0.5 + random.random())
                log.info("registry: %s (attempt %d); retrying in %.1f s", str(err).splitlines()[0][:200],
                         attempt + 1, delay)
                time.sleep(delay)
        raise AssertionError("unreachable")

    # ------------------------------------------------------------------------------------------------ objects

    def experiment_id(self, name: str, artifact_location: str | None) -> str:
        from mlflow.exceptions import MlflowException

        c = self.client
        exp = self.retry(c.get_experiment_by_name, name)
        if exp is not None:
            return exp.experiment_id
        try:
            return self.retry(c.create_experiment, name, artifact_location=artifact_location)
        except MlflowException:  # created by another publisher meanwhile
            exp = self.retry(c.get_experiment_by_name, name)
            if exp is None:
                raise
            return exp.experiment_id

    def ensure_model(self, name: str, tags: dict[str, str], description: str) -> None:
        from mlflow.exceptions import MlflowException

        try:
            self.retry(self.client.get_registered_model, name)
            return
        except MlflowException:
            pass
        try:
            self.retry(self.client.create_registered_model, name, tags=tags, description=description)
        except MlflowException as err:
            if "already exists" not in str(err).lower() and "RESOURCE_ALREADY_EXISTS" not in str(err):
                raise

    def model_tags(self, name: str) -> dict[str, str]:
        return dict(self.retry(self.client.get_registered_model, name).tags or {})

    def version(self, name: str, ref: str):
        """A model version by number or alias; RegistryError naming the store when absent."""
        from mlflow.exceptions import MlflowException

        try:
            if str(ref).isdigit():
                return self.retry(self.client.get_model_version, name, str(ref))
            return self.retry(self.client.get_model_version_by_alias, name, str(ref))
        except MlflowException as err:
            raise RegistryError(f"{name}: no version {ref!r} in {self.uri}: {err.message}") from None

    def alias_version(self, name: str, alias: str) -> str | None:
        from mlflow.exceptions import MlflowException

        try:
            return str(self.retry(self.client.get_registered_model, name).aliases.get(alias) or "") or None
        except MlflowException:
            return None

    # ------------------------------------------------------------------------------------------------ files

    def fetch(self, source: str, dest: Path, expected: dict[str, str]) -> Path:
        """A verified private copy of the artifact dir ``source`` at ``dest`` (re-verified when it exists)."""
        from modpipe.registry.policy import verify_files

        if dest.is_dir():
            problems = verify_files(dest, expected)
            if not problems:
                return dest
            log.warning("registry: cached copy %s fails verification (%s); fetching again", dest, problems[0])
            shutil.rmtree(dest)
        dest.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}-{random.randrange(1 << 30):x}")
        try:
            here = local_path(source)
            if here is not None:
                if not here.is_dir():
                    raise RegistryError(f"artifacts not found at {source}")
                shutil.copytree(here, tmp, symlinks=True)  # a symlink stays a symlink: verification refuses it
            else:
                import mlflow.artifacts

                tmp.mkdir(mode=0o700)
                got = Path(mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=str(tmp),
                                                               tracking_uri=self.uri))
                if got != tmp:  # downloaded into tmp/<basename>
                    inner = tmp.with_name(tmp.name + "-in")
                    os.replace(got, inner)
                    shutil.rmtree(tmp)
                    os.replace(inner, tmp)
            problems = verify_files(tmp, expected)
            if problems:
                raise RegistryError(f"{source} fails verification: {'; '.join(problems[:5])}")
            try:
                os.replace(tmp, dest)
            except OSError:  # another process put a copy there first: use it (verified again below)
                shutil.rmtree(tmp, ignore_errors=True)
                problems = verify_files(dest, expected)
                if problems:
                    raise RegistryError(f"{dest} fails verification: {'; '.join(problems[:5])}") from None
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        return dest
