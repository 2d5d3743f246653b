"""Seals for Ray Tune's own pickles: nothing in a run dir is unpickled unless this driver wrote it.

``Tuner.restore`` unpickles ``tuner.pkl`` and the cloudpickled fields of ``experiment_state-*.json`` and the search
algorithm's state, and a result grid reads trials' ``error.pkl``: a file planted in the run dir would run code in
the driver. Ray keeps these files in the experiment dir (``<work>/ray/<task>``), which lives in the run dir and may
sit on shared storage; so the sha256 of every such file is recorded *outside* it, as the driver writes it:

- where: ``<state_dir>/tune-seals/<sha256 of the experiment path>.json``; ``state_dir`` is ``tune.state_dir``,
  else ``$MODPIPE_STATE_DIR``, else ``$XDG_STATE_HOME/modpipe``, else ``~/.local/state/modpipe`` (the user's own,
  mode 0700; a state dir inside the run dir is refused: a digest kept beside the file protects nothing);
- when: after the Tuner wrote ``tuner.pkl``, and at every step of the sweep (``SealCallback.on_step_end``) over the
  driver's staging copy of the experiment state (complete when the step saves it, before it is synced to the
  experiment dir) and the experiment dir itself; every digest ever recorded for a file name is kept, so a copy the
  sync had not yet replaced when the driver was killed still verifies;
- check: before ``Tuner.restore``, every protected file in the experiment dir must have a recorded digest;
  otherwise the restore is refused (``SealError``) naming the files, and nothing is unpickled.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from modpipe.lineage import sha256_file

PROTECTED = ("*.pkl", "*.pickle", "experiment_state-*.json", "*-state-*.json", "search_gen_state-*.json")
"""Files Ray Tune unpickles (or whose fields it cloudpickle-loads) when restoring or reading results."""
MAX_DIGESTS = 64
"""Digests kept per file name (the experiment state is rewritten at every checkpoint of the sweep)."""


class SealError(RuntimeError):
    """A protected file whose digest this driver never recorded: refusing to unpickle it."""


def state_dir(configured: str | None, run_dir: Path) -> Path:
    """The seals' dir (see the module docstring); refuses one inside ``run_dir``."""
    if configured:
        base = Path(configured).expanduser()
    elif os.environ.get("MODPIPE_STATE_DIR"):
        base = Path(os.environ["MODPIPE_STATE_DIR"]).expanduser()
    elif os.environ.get("XDG_STATE_HOME"):
        base = Path(os.environ["XDG_STATE_HOME"]).expanduser() / "modpipe"
    else:
        base = Path.home() / ".local" / "state" / "modpipe"
    base = base.resolve()
    run = Path(run_dir).resolve()
    if base == run or run in base.parents:
        raise SealError(f"tune.state_dir {base} is inside the run dir {run}: a digest kept beside the file it "
                        f"protects protects nothing; point it outside (default: ~/.local/state/modpipe)")
    return base


def _protected(rel: str) -> bool:
    name = rel.rsplit("/", 1)[-1]
    return any(fnmatch.fnmatch(name, p) for p in PROTECTED)


def _files(root: Path) -> dict[str, Path]:
    if not root.is_dir():
        return {}
    out = {}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for f in filenames:
            p = Path(dirpath) / f
            rel = p.relative_to(root).as_posix()
            if _protected(rel):
                out[rel] = p
    return out


class Seal:
    """The recorded digests of one experiment dir's protected files."""

    def __init__(self, experiment: str | Path, state: Path):
        self.experiment = Path(experiment).resolve()
        key = hashlib.sha256(str(self.experiment).encode()).hexdigest()[:32]
        self.dir = Path(state) / "tune-seals"
        self.path = self.dir / f"{key}.json"
        self._seen: dict[str, tuple[int, int]] = {}

    def _load(self) -> dict[str, list[str]]:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        return data.get("files", {}) if isinstance(data, dict) else {}

    def _save(self, files: dict[str, list[str]]) -> None:
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump({"experiment": str(self.experiment), "files": files}, f, indent=1, sort_keys=True)
        os.replace(tmp, self.path)

    def record(self, *roots: str | Path) -> int:
        """Add the digests of the protected files under the experiment dir and ``roots`` (the driver's staging
        copy); only files whose size or mtime changed since the last call are read. Returns files newly sealed."""
        found = [(rel, p) for root in (*roots, self.experiment) for rel, p in _files(Path(root)).items()]
        changed: list[tuple[str, str]] = []
        for rel, p in found:
            try:
                st = p.stat()
            except OSError:
                continue
            sig = (st.st_size, st.st_mtime_ns)
            if self._seen.get(str(p)) != sig:
                self._seen[str(p)] = sig
                try:
                    changed.append((rel, sha256_file(p)))
                except OSError:
                    continue
        if not changed:
            return 0
        files = self._load()
        added = 0
        for rel, digest in changed:
            known = files.setdefault(rel, [])
            if digest not in known:
                known.append(digest)
                del known[:-MAX_DIGESTS]
                added += 1
        if added:
            self._save(files)
        return added

    def problems(self) -> list[str]:
        """Protected files in the experiment dir whose digest was never recorded."""
        files = self._load()
        out = []
        for rel, p in sorted(_files(self.experiment).items()):
            if p.is_symlink():
                out.append(f"{rel} is a symlink")
            elif sha256_file(p) not in files.get(rel, []):
                out.append(f"{rel} (sha256 {sha256_file(p)[:12]}) was not written by this user's sweeps")
        return out

    def verify(self) -> None:
        bad = self.problems()
        if bad:
            raise SealError(f"refusing to restore the sweep at {self.experiment}: Ray Tune would unpickle "
                            f"{', '.join(bad[:5])}{' ...' if len(bad) > 5 else ''} (seal: {self.path}). "
                            f"Remove {self.experiment} to start the sweep again.")


def seal_callback(seal: Seal):
    """A Tune callback sealing at every step (``ray.tune`` imported only when a sweep runs)."""
    from ray.tune import Callback

    class SealCallback(Callback):
        def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
            staging = [t.storage.experiment_driver_staging_path for t in trials[:1] if getattr(t, "storage", None)]
            seal.record(*staging)

        def on_experiment_end(self, trials: list, **info: Any) -> None:
            self.on_step_end(0, trials)

    return SealCallback()
