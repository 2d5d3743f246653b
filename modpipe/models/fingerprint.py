"""Backbone fingerprint: sha256 over every file that changes what the backbone computes, so modules can check
compatibility and nobody loads a backbone whose files changed since export.

Covered (``BEHAVIOUR_GLOBS``, anywhere in the dir): weights (``*.safetensors``), every JSON file (``config.json``,
``generation_config.json``, ``tokenizer.json``, ``tokenizer_config.json``, ``special_tokens_map.json``,
``added_tokens.json``, chat templates ...: changing the pad token changes predictions), and the other files
tokenizers and remote code read (``*.jinja``, ``*.model``, ``merges.txt``, ``vocab.txt``, ``*.py``). Left out:
the run's own records (``fingerprint.json``, ``metrics.json``, the executor's ``status.json``), which describe the
backbone without changing it. ``config.json`` and ``generation_config.json`` are hashed as canonical JSON without
``transformers_version`` (cosmetic).

A backbone dir holding a symlink (or any entry that is not a regular file or folder) is refused, here and by
every loader (``check_backbone_dir``): a link could point the loader at files outside the dir that no digest
covers.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from modpipe.lineage import sha256_file

FINGERPRINT_FILE = "fingerprint.json"
FORMAT = 2
"""Format 1 covered weights, config.json and tokenizer.json only."""
BEHAVIOUR_GLOBS = ("*.safetensors", "*.json", "*.jinja", "*.model", "*.tiktoken", "merges.txt", "vocab.txt", "*.py")
RECORDS = frozenset({FINGERPRINT_FILE, "metrics.json", "status.json"})
"""Files of the run that describe the backbone without changing it (top level only)."""
_CANONICAL_JSON = ("config.json", "generation_config.json")


class BackboneDirError(ValueError):
    """A backbone dir that must not be loaded (symlinks, special files)."""


def check_backbone_dir(backbone_dir: str | Path) -> Path:
    """The dir, if it is a folder of regular files and folders only; BackboneDirError naming what is not."""
    root = Path(backbone_dir)
    if not root.is_dir():
        raise BackboneDirError(f"{root}: backbone dir not found")
    odd = [p.relative_to(root).as_posix() + (" (symlink)" if p.is_symlink() else " (not a regular file)")
           for p in sorted(root.rglob("*")) if p.is_symlink() or not (p.is_file() or p.is_dir())]
    if odd:
        raise BackboneDirError(f"{root}: backbone dir refused, it holds {', '.join(odd[:5])}"
                               + (f" and {len(odd) - 5} more" if len(odd) > 5 else ""))
    return root


def behaviour_files(root: Path) -> list[Path]:
    """Files under ``root`` that change what the backbone computes (sorted)."""
    found = {p for g in BEHAVIOUR_GLOBS for p in root.rglob(g) if p.is_file()}
    return sorted(p for p in found if p.relative_to(root).as_posix() not in RECORDS)


def _digest(root: Path, path: Path) -> str:
    if path.parent == root and path.name in _CANONICAL_JSON:
        cfg = json.loads(path.read_text())
        if isinstance(cfg, dict):
            cfg.pop("transformers_version", None)  # cosmetic; does not change the model
        return hashlib.sha256(json.dumps(cfg, sort_keys=True).encode()).hexdigest()
    return sha256_file(path)


def compute_backbone_fingerprint(backbone_dir: str | Path) -> dict:
    """Digest every behaviour file (``behaviour_files``); return the record written to ``fingerprint.json``."""
    root = check_backbone_dir(backbone_dir)
    files = {p.relative_to(root).as_posix(): _digest(root, p) for p in behaviour_files(root)}
    weights = {k: v for k, v in files.items() if k.endswith(".safetensors")}
    if not weights:
        raise FileNotFoundError(f"{root}: no *.safetensors weights")
    if "config.json" not in files:
        raise FileNotFoundError(f"{root}: no config.json")
    fp = hashlib.sha256(json.dumps({"format": FORMAT, "files": files}, sort_keys=True).encode()).hexdigest()
    return {"format": FORMAT, "fingerprint": fp, "files": files, "weights": weights, "config": files["config.json"],
            "tokenizer": {k: v for k, v in files.items() if k.startswith(("tokenizer", "special_tokens", "added"))}}


def write_backbone_fingerprint(backbone_dir: str | Path, lineage: dict | None = None) -> str:
    """Write ``fingerprint.json``; ``lineage``: where the backbone came from (pretrain's ``init_from``: the path and
    digest of the checkpoint it continued), recorded beside the digests, not part of the fingerprint."""
    record = {**compute_backbone_fingerprint(backbone_dir), **(lineage or {})}
    (Path(backbone_dir) / FINGERPRINT_FILE).write_text(json.dumps(record, indent=2))
    return record["fingerprint"]


def read_backbone_fingerprint(backbone_dir: str | Path, verify: bool = True) -> str:
    """The recorded fingerprint; with ``verify`` recompute it and refuse a backbone whose files changed (naming
    them) or that holds symlinks."""
    root = Path(backbone_dir)
    record = json.loads((root / FINGERPRINT_FILE).read_text())
    recorded = record["fingerprint"]
    if verify:
        actual = compute_backbone_fingerprint(root)
        if record.get("format") != FORMAT:
            raise ValueError(f"{root}: {FINGERPRINT_FILE} has format {record.get('format', 1)}, which does not cover "
                             f"every file that changes the backbone; export it again (rerun pretrain)")
        if actual["fingerprint"] != recorded:
            was, now = record.get("files", {}), actual["files"]
            changed = sorted(k for k in set(was) | set(now) if was.get(k) != now.get(k))
            raise ValueError(f"{root}: backbone files changed since export (fingerprint {actual['fingerprint'][:12]} "
                             f"!= {recorded[:12]}): {', '.join(changed[:8]) or '?'}")
    return recorded
