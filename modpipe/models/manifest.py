"""The module contract: ``module.json``, what a module needs from its backbone and what it holds.

Written by the adapt stage beside the weights; checked by ``modules.load_module`` before a module is attached.
PEFT and AdapterHub record the base model but never check it; here every field that decides whether the module's
weights mean anything on a backbone is compared, and a mismatch is refused with the field's name:

- ``hidden_size``, ``num_layers``, ``vocab_size`` against the backbone's ``config.json``;
- ``tokenizer_sha256`` against the backbone's ``tokenizer.json``;
- ``backbone_fingerprint`` against the fingerprint recomputed from the backbone's files;
- ``files``: the sha256 of every file the manifest lists (weights first) against the files on disk;
- ``module.method`` / ``module.head`` must be kinds this version can build.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from modpipe.lineage import sha256_file

MANIFEST_FILE = "module.json"
FORMAT = "modpipe-module/1"


class ModuleContractError(ValueError):
    """A module that must not be attached to this backbone; ``fields`` names every mismatched field."""

    def __init__(self, module_dir: str | Path, problems: list[tuple[str, str]]):
        self.fields = [f for f, _ in problems]
        super().__init__(f"module {module_dir} refused: " + "; ".join(f"{f}: {why}" for f, why in problems))


def backbone_facts(backbone_dir: str | Path) -> dict[str, Any]:
    """What a module records about (and checks against) its backbone; the fingerprint is recomputed from the
    files, never read from the backbone's own record."""
    from modpipe.models.fingerprint import compute_backbone_fingerprint

    root = Path(backbone_dir)
    cfg = json.loads((root / "config.json").read_text())
    tok = root / "tokenizer.json"
    return {
        "backbone_fingerprint": compute_backbone_fingerprint(root)["fingerprint"],
        "hidden_size": cfg.get("hidden_size"), "num_layers": cfg.get("num_hidden_layers"),
        "vocab_size": cfg.get("vocab_size"), "tokenizer_sha256": sha256_file(tok) if tok.is_file() else None,
    }


CHECKED_FIELDS = ("hidden_size", "num_layers", "vocab_size", "tokenizer_sha256", "backbone_fingerprint")
"""Most specific first: a different architecture also changes the fingerprint, and the message says why."""


def read_manifest(module_dir: str | Path) -> dict[str, Any]:
    path = Path(module_dir) / MANIFEST_FILE
    if not path.is_file():
        raise ModuleContractError(module_dir, [(MANIFEST_FILE, "missing")])
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ModuleContractError(module_dir, [(MANIFEST_FILE, f"not JSON ({err})")]) from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("module"), dict):
        raise ModuleContractError(module_dir, [("module", "module.json has no module section (method, head)")])
    return manifest


def verify_module(manifest: dict[str, Any], backbone_dir: str | Path, module_dir: str | Path,
                  known_methods: tuple[str, ...] = ()) -> None:
    """Raise ``ModuleContractError`` listing every field where module and backbone (or files) disagree."""
    from modpipe.models.heads import HEADS

    problems: list[tuple[str, str]] = []
    facts = backbone_facts(backbone_dir)
    for name in CHECKED_FIELDS:
        want, have = manifest.get(name), facts[name]
        if want is None:
            problems.append((name, "not recorded in module.json"))
        elif want != have:
            problems.append((name, f"module was trained with {_short(want)}, backbone has {_short(have)}"))
    spec = manifest["module"]
    if known_methods and spec.get("method") not in known_methods:
        problems.append(("module.method", f"unknown kind {spec.get('method')!r}"))
    if spec.get("head") not in HEADS:
        problems.append(("module.head", f"unknown head {spec.get('head')!r}"))
    files = manifest.get("files")
    if not isinstance(files, dict) or not files.get("adapter_model.safetensors"):
        problems.append(("files", "no sha256 recorded for adapter_model.safetensors"))
        files = files if isinstance(files, dict) else {}
    root = Path(module_dir)
    for rel, digest in sorted(files.items()):
        path = root / rel
        if not path.is_file():
            problems.append((f"files[{rel}]", "missing"))
        elif sha256_file(path) != digest:
            problems.append((f"files[{rel}]", f"sha256 {sha256_file(path)[:12]} != recorded {str(digest)[:12]}"))
    if problems:
        raise ModuleContractError(module_dir, problems)


def file_digests(root: str | Path, exclude: tuple[str, ...] = (MANIFEST_FILE, "provenance.json")) -> dict[str, str]:
    """sha256 of every file under ``root`` (relative posix path -> digest), the manifest itself left out."""
    root = Path(root)
    return {p.relative_to(root).as_posix(): sha256_file(p) for p in sorted(root.rglob("*"))
            if p.is_file() and p.relative_to(root).as_posix() not in exclude}


def write_manifest(module_dir: str | Path, record: dict[str, Any]) -> dict[str, Any]:
    """Write ``module.json`` = ``record`` + format + the sha256 of every file now in ``module_dir``."""
    manifest = {"format": FORMAT, **record, "files": file_digests(module_dir)}
    (Path(module_dir) / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2))
    return manifest


def _short(v: Any) -> str:
    s = str(v)
    return s[:12] if len(s) == 64 else s
