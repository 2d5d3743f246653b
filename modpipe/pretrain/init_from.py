"""Continued pretraining: ``pretrain.init_from`` names a local Hugging Face checkpoint dir that pretraining starts
from instead of freshly initialised weights (a new optimizer and LR schedule; the weights are the checkpoint's).

What the dir must hold (``check_dir``; every refusal names the path):

- regular files and folders only (no symlinks: ``models.fingerprint.check_backbone_dir``);
- ``config.json`` of a decoder modpipe's trainer builds: ``LlamaForCausalLM`` with tied embeddings, as many
  key/value heads as heads and the other settings of ``models.backbone.build_config`` (``ARCH_KEYS``). Its sizes
  become the ``model`` section (``model_section``, at config load); an explicit ``model`` field that differs is
  refused rather than ignored;
- weights as ``*.safetensors`` only: a dir with only ``pytorch_model.bin`` / ``*.pt`` is refused (pickled
  weights are never loaded). Their names and shapes are checked against the model before Ray starts
  (``check_weights``, headers only); the workers load them with ``load_weights``;
- ``tokenizer.json`` (a fast tokenizer) with modpipe's special tokens ``<pad>``, ``<unk>``, ``<eos>`` at ids 0, 1, 2
  and exactly ``config.json``'s ``vocab_size`` ids. Curate encodes the corpus with it (no tokenizer is trained).

Digests: ``checkpoint_digest`` is the backbone fingerprint of the dir (weights, config.json, tokenizer files;
``models.fingerprint``): it is part of pretrain's version and is recorded in the export's ``fingerprint.json`` and
``metrics.json`` (``init_from``: path + digest). ``tokenizer_digest`` (the tokenizer files only) is part of curate's
version: editing the weights re-runs pretrain, editing the tokenizer re-runs curate too.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from modpipe.lineage import sha256_file

MODEL_FIELDS = {"hidden_size": "hidden_size", "num_layers": "num_hidden_layers", "num_heads": "num_attention_heads",
                "intermediate_size": "intermediate_size", "max_position_embeddings": "max_position_embeddings"}
"""``model`` section field -> its ``config.json`` key."""
ARCH_KEYS = ("model_type", "hidden_act", "num_key_value_heads", "head_dim", "tie_word_embeddings", "attention_bias",
             "mlp_bias", "rms_norm_eps", "rope_parameters", "pretraining_tp", "pad_token_id", "bos_token_id",
             "eos_token_id")
"""``config.json`` settings that must equal what ``build_config`` builds (the model section cannot express them)."""
PICKLED_WEIGHTS = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl")
TOKENIZER_FILES = ("tokenizer", "special_tokens", "added_tokens")
"""Name prefixes of the tokenizer files (what curate reads)."""


class InitFromError(ValueError):
    """A checkpoint dir pretraining cannot start from; the message names the path and what is wrong."""


def check_dir(path: str | Path) -> Path:
    """The checkpoint dir (absolute), if it holds config.json, safetensors weights and tokenizer.json and nothing
    odd; InitFromError otherwise."""
    from modpipe.models.fingerprint import BackboneDirError, check_backbone_dir

    root = Path(path).absolute()
    if root.is_symlink() or not root.is_dir():
        raise InitFromError(f"pretrain.init_from {root}: checkpoint dir not found" +
                            (" (it is a symlink)" if root.is_symlink() else ""))
    try:
        check_backbone_dir(root)
    except BackboneDirError as err:
        raise InitFromError(f"pretrain.init_from {err}") from None
    if not (root / "config.json").is_file():
        raise InitFromError(f"pretrain.init_from {root}: no config.json")
    if not list(root.glob("*.safetensors")):
        pickles = sorted(p.name for g in PICKLED_WEIGHTS for p in root.glob(g))
        raise InitFromError(f"pretrain.init_from {root}: no *.safetensors weights" + (
            f" (only {', '.join(pickles)}: pickled weights are never loaded; convert them to safetensors)"
            if pickles else ""))
    if not (root / "tokenizer.json").is_file():
        raise InitFromError(f"pretrain.init_from {root}: no tokenizer.json (a fast tokenizer: curate encodes the "
                            f"corpus with the checkpoint's tokenizer)")
    return root


def read_tokenizer(path: str | Path):
    """The checkpoint's ``tokenizers.Tokenizer``, checked for modpipe's special tokens at ids 0, 1, 2."""
    from tokenizers import Tokenizer

    from modpipe.models.backbone import SPECIAL_TOKENS

    file = check_dir(path) / "tokenizer.json"
    try:
        tok = Tokenizer.from_file(str(file))
    except Exception as err:  # tokenizers raises its own Exception type for malformed JSON
        raise InitFromError(f"{file}: not a tokenizers JSON file ({err})") from None
    ids = [tok.token_to_id(t) for t in SPECIAL_TOKENS]
    if ids != list(range(len(SPECIAL_TOKENS))):
        raise InitFromError(f"{file}: special tokens {SPECIAL_TOKENS} have ids {ids}; modpipe needs them at "
                            f"{list(range(len(SPECIAL_TOKENS)))} (padding and EOS packing rely on them)")
    return tok


def _config_json(root: Path) -> dict:
    try:
        raw = json.loads((root / "config.json").read_text())
    except ValueError as err:
        raise InitFromError(f"{root / 'config.json'}: not JSON ({err})") from None
    if not isinstance(raw, dict):
        raise InitFromError(f"{root / 'config.json'}: not a JSON object")
    return raw


def model_section(path: str | Path, explicit: dict[str, Any]) -> dict[str, Any]:
    """The ``model`` section the checkpoint's config.json describes. ``explicit``: the fields the user's config set;
    one that differs from the checkpoint is refused. Also refuses an architecture modpipe's trainer does not build
    and a vocabulary size that is not the tokenizer's."""
    from pydantic import ValidationError

    from modpipe.config import ModelConfig

    root = check_dir(path)
    raw = _config_json(root)
    missing = [key for key in MODEL_FIELDS.values() if not isinstance(raw.get(key), int)]
    if missing or not isinstance(raw.get("vocab_size"), int):
        raise InitFromError(f"{root / 'config.json'}: no integer {', '.join(missing or ['vocab_size'])}")
    model = {field: raw[key] for field, key in MODEL_FIELDS.items()}
    conflicts = [f"model.{k}={v!r} (checkpoint: {model[k]!r})" for k, v in explicit.items()
                 if k in model and v != model[k]]
    if conflicts:
        raise InitFromError(f"pretrain.init_from {root}: the architecture comes from its config.json; remove or fix "
                            f"{', '.join(conflicts)}")
    try:
        model_cfg = ModelConfig(**model)
    except ValidationError as err:
        raise InitFromError(f"{root / 'config.json'}: sizes modpipe's trainer cannot build: "
                            f"{err.errors()[0]['loc']}: {err.errors()[0]['msg']}") from None
    _check_architecture(root, raw, model_cfg)
    vocab = read_tokenizer(root).get_vocab_size(with_added_tokens=True)
    if vocab != raw["vocab_size"]:
        raise InitFromError(f"{root / 'config.json'}: vocab_size {raw['vocab_size']} != {vocab} ids in "
                            f"{root / 'tokenizer.json'}")
    return {**explicit, **model}


def _check_architecture(root: Path, raw: dict, model_cfg) -> None:
    from transformers import LlamaConfig

    from modpipe.models.backbone import build_config

    if raw.get("model_type") != "llama" or raw.get("architectures", ["LlamaForCausalLM"]) != ["LlamaForCausalLM"]:
        raise InitFromError(f"{root / 'config.json'}: model_type {raw.get('model_type')!r}, architectures "
                            f"{raw.get('architectures')}: modpipe's trainer builds LlamaForCausalLM only")
    theirs = LlamaConfig.from_dict(raw).to_dict()  # the defaults of keys config.json leaves out filled in
    ours = build_config(model_cfg, raw["vocab_size"]).to_dict()
    differ = [f"{k}={theirs.get(k)!r} (modpipe builds {ours.get(k)!r})" for k in ARCH_KEYS
              if theirs.get(k) != ours.get(k)]
    if differ:
        raise InitFromError(f"{root / 'config.json'}: an architecture modpipe's trainer cannot build: "
                            f"{'; '.join(differ)}")


def checkpoint_digest(path: str | Path) -> str:
    """sha256 over the checkpoint's weights, config.json and tokenizer files (its backbone fingerprint)."""
    from modpipe.models.fingerprint import compute_backbone_fingerprint

    return compute_backbone_fingerprint(check_dir(path))["fingerprint"]


def tokenizer_digest(path: str | Path) -> str:
    """sha256 over the checkpoint's tokenizer files only (what curate reads)."""
    root = check_dir(path)
    files = {p.name: sha256_file(p) for p in sorted(root.iterdir())
             if p.is_file() and p.name.startswith(TOKENIZER_FILES)}
    return hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()


def check_weights(path: str | Path, model_cfg, vocab_size: int) -> None:
    """The safetensors' tensor names and shapes are exactly the model's (headers only; nothing is loaded)."""
    import torch
    from safetensors import safe_open
    from transformers import LlamaForCausalLM

    from modpipe.models.backbone import build_config

    root = check_dir(path)
    with torch.device("meta"):  # shapes only, no memory
        model = LlamaForCausalLM(build_config(model_cfg, vocab_size))
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    found: dict[str, tuple] = {}
    for file in sorted(root.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as f:
            found.update({k: tuple(f.get_slice(k).get_shape()) for k in f.keys()})
    tied = {"lm_head.weight"}  # build_config ties the LM head to the embeddings: save_pretrained leaves it out
    missing = sorted(set(expected) - set(found) - tied)
    extra = sorted(set(found) - set(expected))
    wrong = sorted(f"{k} {found[k]} != {expected[k]}" for k in set(found) & set(expected) if found[k] != expected[k])
    if missing or extra or wrong:
        raise InitFromError(f"pretrain.init_from {root}: weights do not fit config.json: "
                            + "; ".join(f"{what}: {', '.join(names[:5])}" for what, names in
                                        (("missing", missing), ("unexpected", extra), ("shape", wrong)) if names))


def load_weights(model, path: str | Path) -> None:
    """The checkpoint's safetensors into ``model`` (checked by ``check_weights`` first)."""
    from safetensors.torch import load_file

    root = Path(path)
    state: dict = {}
    for file in sorted(root.glob("*.safetensors")):
        state.update(load_file(str(file)))
    result = model.load_state_dict(state, strict=False)  # shapes must match (torch raises otherwise)
    if result.unexpected_keys or set(result.missing_keys) - {"lm_head.weight"}:
        raise InitFromError(f"pretrain.init_from {root}: weights do not fit the model (missing "
                            f"{result.missing_keys[:5]}, unexpected {result.unexpected_keys[:5]})")
