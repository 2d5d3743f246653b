"""Module kinds by name, built on one backbone, saved and loaded by one interface.

``METHODS`` maps ``adapt.method`` to its kind: parameter composition (``lora``, ``ia3``: PEFT), input composition
(``prefix``, ``prompt``: PEFT), function composition (``bottleneck``: ``bottleneck.py``), and the two baselines
``linear_probe`` (head only) and ``full`` (every weight). Every kind sits on the same transformers sequence
classifier with a ``score`` head (``heads.py``), and every module dir holds ``adapter_config.json`` +
``adapter_model.safetensors`` (PEFT's files for PEFT kinds), plus ``backbone_delta.safetensors`` when a freeze
policy let backbone blocks train, and ``module.json`` (``manifest.py``).

``load_module(backbone_dir, module_dir)`` checks the manifest against the backbone and every file's sha256,
rebuilds the classifier and attaches the module (eval mode); ``predict_proba`` runs it on texts.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from modpipe.models.heads import attach_head
from modpipe.models.manifest import MANIFEST_FILE, read_manifest, verify_module

DELTA_FILE = "backbone_delta.safetensors"
"""Backbone weights a freeze policy let train (by the module model's parameter names)."""
WEIGHT_FILES = ("adapter_model.safetensors", DELTA_FILE)


# ---------------------------------------------------------------- method kinds


def _peft_lora(c: dict[str, Any]):
    from peft import LoraConfig, TaskType

    return LoraConfig(task_type=TaskType.SEQ_CLS, r=int(c["r"]), lora_alpha=int(c["alpha"]),
                      lora_dropout=float(c["dropout"]), target_modules=list(c["target_modules"]))


def _peft_ia3(c: dict[str, Any]):
    from peft import IA3Config, TaskType

    return IA3Config(task_type=TaskType.SEQ_CLS, target_modules=list(c["target_modules"]),
                     feedforward_modules=list(c["feedforward_modules"]))


def _peft_prefix(c: dict[str, Any]):
    from peft import PrefixTuningConfig, TaskType

    return PrefixTuningConfig(task_type=TaskType.SEQ_CLS, num_virtual_tokens=int(c["num_virtual_tokens"]))


def _peft_prompt(c: dict[str, Any]):
    from peft import PromptTuningConfig, TaskType

    return PromptTuningConfig(task_type=TaskType.SEQ_CLS, num_virtual_tokens=int(c["num_virtual_tokens"]))


@dataclass(frozen=True)
class Method:
    name: str
    family: str
    """Computation-function family (Pfeiffer et al., Modular Deep Learning): parameter | input | function |
    head (baseline) | full (baseline)."""
    config_section: str | None
    """The ``adapt`` config section holding this kind's hyperparameters."""
    peft_config: Callable[[dict], Any] | None = None
    """PEFT kinds: hyperparameters -> PEFT config (task SEQ_CLS: ``score`` trains and is saved through
    ``modules_to_save``)."""
    native: str | None = None
    """Native kinds: ``module:class`` of their ``NativeModel`` subclass."""
    padding_side: str = "right"
    """Prompt tuning feeds embeddings, so the classifier cannot find the last non-pad token by id and pools the
    last position: its batches are left-padded so that position is a real token."""

    @property
    def peft(self) -> bool:
        return self.peft_config is not None

    def native_class(self):
        import importlib

        mod, cls = self.native.split(":")
        return getattr(importlib.import_module(mod), cls)


METHODS: dict[str, Method] = {
    "lora": Method("lora", "parameter", "lora", peft_config=_peft_lora),
    "ia3": Method("ia3", "parameter", "ia3", peft_config=_peft_ia3),
    "prefix": Method("prefix", "input", "prefix", peft_config=_peft_prefix),
    "prompt": Method("prompt", "input", "prefix", peft_config=_peft_prompt, padding_side="left"),
    "bottleneck": Method("bottleneck", "function", "bottleneck", native="modpipe.models.bottleneck:BottleneckModel"),
    "linear_probe": Method("linear_probe", "head", None, native="modpipe.models.native:NativeModel"),
    "full": Method("full", "full", None, native="modpipe.models.native:FullModel"),
}


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise ValueError(f"unknown module method {name!r}; choose one of {', '.join(METHODS)}")
    return METHODS[name]


# ---------------------------------------------------------------- build


def build_classifier(backbone_dir: str | Path, num_labels: int, head: str, seed: int):
    """The backbone as a transformers sequence classifier with a fresh ``head``; every backbone weight frozen,
    the head trainable. Seeded: the same call gives the same head."""
    import torch
    from transformers import AutoModelForSequenceClassification

    from modpipe.models.backbone import PAD_ID
    from modpipe.models.fingerprint import check_backbone_dir

    check_backbone_dir(backbone_dir)  # no symlinks: every file read is one the fingerprint covers
    torch.manual_seed(seed)
    # safetensors only: a pickled pytorch_model.bin planted beside the weights is never loaded
    base = AutoModelForSequenceClassification.from_pretrained(str(backbone_dir), num_labels=num_labels,
                                                              use_safetensors=True)
    if base.config.pad_token_id is None:  # the classifier pools the last non-pad token
        base.config.pad_token_id = PAD_ID
    attach_head(base, head, num_labels)
    for name, p in base.named_parameters():
        p.requires_grad_(name.startswith("score."))
    return base


def backbone_param_count(classifier) -> int:
    """Parameters of the backbone alone (the classifier without its head): the denominator of trainable %."""
    return sum(p.numel() for n, p in classifier.named_parameters() if not n.startswith("score."))


def attach_method(base, spec: dict[str, Any]):
    """Wrap ``base`` with the module ``spec["method"]`` (hyperparameters ``spec["config"]``), freshly initialised."""
    method = get_method(spec["method"])
    if method.peft:
        from peft import get_peft_model

        return get_peft_model(base, method.peft_config(spec["config"]))
    return method.native_class()(base, spec["config"] or {})


def build_task_model(backbone_dir: str | Path, num_labels: int, spec: dict[str, Any], seed: int):
    """Classifier + head + module for training: ``(model, backbone_params)``. ``spec``: ``method``, ``head``,
    ``config`` (the method's hyperparameters). Freeze policies are applied by the caller (``freeze.py``)."""
    base = build_classifier(backbone_dir, num_labels, spec["head"], seed)
    n_backbone = backbone_param_count(base)
    return attach_method(base, spec), n_backbone


def num_blocks(model) -> int:
    return int(_classifier(model).config.num_hidden_layers)


def _classifier(model):
    """The transformers classifier inside a module model (PEFT or native)."""
    if hasattr(model, "get_base_model"):
        return model.get_base_model()
    return getattr(model, "base", model)


# ---------------------------------------------------------------- save / load


def save_weights(model, method: str, out_dir: str | Path, extra_names: list[str] | tuple = ()) -> list[str]:
    """Write the module's weight files into ``out_dir``; ``extra_names``: backbone parameters (names in
    ``model``) that trained too. Returns the weight files written."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    params = dict(model.named_parameters())
    extra = {n: params[n] for n in extra_names}
    if get_method(method).peft:
        model.save_pretrained(str(out))
        if extra:
            save_file({k: v.detach().contiguous().cpu() for k, v in extra.items()}, str(out / DELTA_FILE))
    else:
        model.save_pretrained(out, extra=extra)
    return [f for f in WEIGHT_FILES if (out / f).is_file()]


def load_weights(model, method: str, module_dir: str | Path) -> None:
    """Load saved weight files into a model built with the same spec (resume from a checkpoint)."""
    from safetensors.torch import load_file

    from modpipe.models.native import load_state

    root = Path(module_dir)
    if get_method(method).peft:
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(model, load_file(str(root / "adapter_model.safetensors")))
    else:
        load_state(model, load_file(str(root / "adapter_model.safetensors")))
    if (root / DELTA_FILE).is_file():
        load_state(model, load_file(str(root / DELTA_FILE)))


def attach_saved(base, method: str, module_dir: str | Path):
    """Attach a saved module to a fresh classifier (PEFT kinds through ``PeftModel.from_pretrained``)."""
    from safetensors.torch import load_file

    from modpipe.models.native import load_state

    root = Path(module_dir)
    m = get_method(method)
    if m.peft:
        from peft import PeftModel

        model = PeftModel.from_pretrained(base, str(root))
    else:
        model = m.native_class().from_pretrained(base, root)
    if (root / DELTA_FILE).is_file():
        load_state(model, load_file(str(root / DELTA_FILE)))
    return model


def load_module(backbone_dir: str | Path, module_dir: str | Path, verify: bool = True):
    """The module in ``module_dir`` on the backbone in ``backbone_dir``, in eval mode.

    Refuses (``ModuleContractError`` naming each mismatched field) a module whose manifest disagrees with the
    backbone (fingerprint, hidden size, blocks, vocabulary, tokenizer sha256) or whose files' sha256 differ from
    the manifest. The model carries ``modpipe_manifest`` and ``padding_side`` for ``predict_proba``.
    """
    manifest = read_manifest(module_dir)
    if verify:
        verify_module(manifest, backbone_dir, module_dir, known_methods=tuple(METHODS))
    spec = manifest["module"]
    base = build_classifier(backbone_dir, int(manifest["num_labels"]), spec["head"], int(manifest.get("seed", 0)))
    model = attach_saved(base, spec["method"], module_dir).eval()
    model.modpipe_manifest = manifest
    model.padding_side = get_method(spec["method"]).padding_side
    return model


# ---------------------------------------------------------------- inference


def encode(tokenizer, texts: list[str], max_length: int, padding_side: str = "right") -> dict:
    """Token ids + attention mask, (B, T), padded on ``padding_side``."""
    return tokenizer(texts, truncation=True, max_length=max_length, padding=True, return_tensors="pt",
                     padding_side=padding_side)


def predict_proba(model, tokenizer, texts: list[str], max_length: int, batch_size: int, device=None,
                  padding_side: str | None = None, activation: str | None = None) -> np.ndarray:
    """The head's scores, N x K, in the order of ``texts``: ``activation`` ``softmax`` (class probabilities),
    ``sigmoid`` (one probability per label: multilabel) or ``none`` (the raw outputs: regression, standardised).
    None: the loaded module's problem (``modpipe_manifest``), else softmax."""
    import torch

    from modpipe.evaluate.problems import activation as activation_of, get

    if activation is None:
        activation = activation_of(get((getattr(model, "modpipe_manifest", None) or {}).get("problem")))
    squash = {"softmax": lambda x: torch.softmax(x, dim=-1), "sigmoid": torch.sigmoid, "none": lambda x: x}[activation]

    device = device or next(model.parameters()).device
    side = padding_side or getattr(model, "padding_side", "right")
    was_training = model.training
    model.eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(texts), batch_size):
            enc = encode(tokenizer, texts[i:i + batch_size], max_length, side)
            logits = model(input_ids=enc["input_ids"].to(device),
                           attention_mask=enc["attention_mask"].to(device)).logits  # (B, K)
            out.append(squash(logits.float()).cpu().numpy())
    model.train(was_training)
    k = int(_classifier(model).config.num_labels)
    return np.concatenate(out) if out else np.zeros((0, k), dtype=np.float32)


__all__ = ["METHODS", "MANIFEST_FILE", "build_task_model", "get_method", "load_module", "predict_proba",
           "save_weights", "load_weights"]
