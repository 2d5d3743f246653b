"""Backbone fingerprint: sha256 over weights, model config and tokenizer, so modules can check compatibility."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from modpipe.lineage import sha256_file

FINGERPRINT_FILE = "fingerprint.json"
# Files that define the backbone's behaviour; everything a module depends on.
_WEIGHT_GLOB = "*.safetensors"
_CONFIG_FILES = ("config.json",)
_TOKENIZER_FILES = ("tokenizer.json",)


def compute_backbone_fingerprint(backbone_dir: str | Path) -> dict:
    """Digest every weight file, the model config (canonical JSON) and the tokenizer; return the record."""
    root = Path(backbone_dir)
    weights = {p.name: sha256_file(p) for p in sorted(root.glob(_WEIGHT_GLOB))}
    if not weights:
        raise FileNotFoundError(f"{root}: no *.safetensors weights")
    cfg = json.loads((root / "config.json").read_text())
    cfg.pop("transformers_version", None)  # cosmetic; does not change the model
    config_digest = hashlib.sha256(json.dumps(cfg, sort_keys=True).encode()).hexdigest()
    tokenizer = {n: sha256_file(root / n) for n in _TOKENIZER_FILES if (root / n).is_file()}
    h = hashlib.sha256()
    for part in (weights, config_digest, tokenizer):
        h.update(json.dumps(part, sort_keys=True).encode())
    return {"fingerprint": h.hexdigest(), "weights": weights, "config": config_digest, "tokenizer": tokenizer}


def write_backbone_fingerprint(backbone_dir: str | Path) -> str:
    record = compute_backbone_fingerprint(backbone_dir)
    (Path(backbone_dir) / FINGERPRINT_FILE).write_text(json.dumps(record, indent=2))
    return record["fingerprint"]


def read_backbone_fingerprint(backbone_dir: str | Path, verify: bool = True) -> str:
    """The recorded fingerprint; with ``verify`` recompute it and refuse a backbone whose files changed."""
    root = Path(backbone_dir)
    recorded = json.loads((root / FINGERPRINT_FILE).read_text())["fingerprint"]
    if verify:
        actual = compute_backbone_fingerprint(root)["fingerprint"]
        if actual != recorded:
            raise ValueError(f"{root}: backbone files changed since export (fingerprint {actual[:12]} != {recorded[:12]})")
    return recorded
