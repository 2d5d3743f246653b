"""The run dir's permissions: private by default, a group mode for shared cluster storage.

A run dir holds the config, the data, the backbone, Ray's checkpoints and the registry: anyone who can write into
it can change what the next run loads, and anyone who can read it can copy the models. ``ensure_run_dir`` creates
it (or tightens one this user owns) with the mode ``run_dir_access`` names before a step writes anything; the
executor calls it first thing for every step. Subfolders are created with the process umask: the run dir's own
mode is what keeps others out.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from modpipe.config import PipelineConfig

log = logging.getLogger("modpipe.rundir")

MODES = {"private": 0o700, "group-read": 0o750, "group-write": 0o2770}
"""``run_dir_access`` -> mode of the run dir (group-write: setgid, so new files keep the dir's group)."""


def ensure_run_dir(cfg: PipelineConfig) -> Path:
    """``cfg.run_path`` with the mode of ``cfg.run_dir_access`` (created if missing; a dir this user owns is
    chmod-ed to it; one owned by someone else is left alone and must already keep others out)."""
    root, mode = cfg.run_path, MODES[cfg.run_dir_access]
    root.mkdir(parents=True, exist_ok=True)
    st = root.stat()
    have = stat.S_IMODE(st.st_mode)
    if have != mode:
        if st.st_uid == os.getuid():
            os.chmod(root, mode)
            log.info("run dir %s: mode %o -> %o (run_dir_access=%s)", root, have, mode, cfg.run_dir_access)
        elif have & 0o007:
            raise PermissionError(f"run dir {root} belongs to uid {st.st_uid} and is open to others (mode {have:o}); "
                                  f"its owner must remove the other-user bits")
    return root
