"""Several task modules on one backbone in memory: mixed batches, in-place swaps.

One ``AutoModel`` backbone (the decoder without any head) is wrapped once in a ``peft.PeftModel``; every LoRA
task module is one named PEFT adapter on it, and its classification head (the module's ``score``) lives beside
it in ``heads``.  Loading a module copies only its adapter + head tensors; the backbone's tensors never move.

Why not ``PeftModel.from_pretrained`` per module: a module is saved from a sequence-classification model whose
``score`` head (``modules_to_save``) has the task's own label count, and one base model has one ``score`` of
one size, so tasks with different label counts cannot share it.  The adapter weights are renamed from the
classifier's layout (``base_model.model.model.layers...``) to the bare backbone's (``base_model.model.layers...``)
and the head is kept per task.

Shapes: ``input_ids`` (B, T) right-padded with ``pad_token_id``; hidden (B, T, H); a task's logits (B, K_task).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

log = logging.getLogger("modpipe.compose")

ADAPTER_WEIGHTS = "adapter_model.safetensors"
CLS_PREFIX = "base_model.model."  # keys of a module saved from the sequence-classification model
HEAD_NAMES = ("score",)


class ComposeError(ValueError):
    """A module that cannot be composed (not LoRA, another backbone, changed files); the message says why."""


@dataclass
class ModuleInfo:
    name: str
    dir: Path
    labels: list[str]
    manifest: dict


def read_manifest(backbone: str | Path, module_dir: str | Path) -> dict:
    """The module's manifest after the module contract's checks (``modpipe.models.manifest.verify_module``:
    backbone fingerprint, hidden size, blocks, vocabulary, tokenizer, sha256 of every file); only LoRA modules
    that left the backbone frozen compose on one shared backbone."""
    from modpipe.models.manifest import read_manifest as read_module_manifest
    from modpipe.models.manifest import verify_module
    from modpipe.models.modules import DELTA_FILE, METHODS

    mdir = Path(module_dir)
    manifest = read_module_manifest(mdir)
    verify_module(manifest, backbone, mdir, known_methods=tuple(METHODS))
    method = manifest["module"]["method"]
    if method != "lora":
        raise ComposeError(f"{mdir}: module.method {method!r}; composition works on LoRA modules")
    if (manifest.get("problem") or "classification") != "classification":
        raise ComposeError(f"{mdir}: a {manifest['problem']} module; composition works on classifiers (its heads "
                           f"are read as class probabilities)")
    if (mdir / DELTA_FILE).is_file():
        raise ComposeError(f"{mdir}: carries {DELTA_FILE} (a freeze policy trained backbone blocks); modules "
                           "composed on one shared backbone must leave it frozen")
    return manifest


def split_module_weights(module_dir: str | Path) -> tuple[dict, dict]:
    """(LoRA tensors keyed for a PeftModel on the bare backbone, head tensors keyed ``<name>.<param>``)."""
    from safetensors.torch import load_file

    lora, head = {}, {}
    for key, tensor in load_file(str(Path(module_dir) / ADAPTER_WEIGHTS)).items():
        rel = key[len(CLS_PREFIX):] if key.startswith(CLS_PREFIX) else key
        if rel.split(".")[0] in HEAD_NAMES:
            head[rel] = tensor
        elif rel.startswith("model."):  # the classifier's decoder attribute -> the bare backbone
            lora[CLS_PREFIX + rel[len("model."):]] = tensor
        else:
            raise ComposeError(f"{module_dir}: unexpected tensor {key!r}")
    if not head:
        raise ComposeError(f"{module_dir}: no head tensors (score.*)")
    return lora, head


def build_head(head_tensors: dict, hidden: int):
    """The task head from its saved tensors: today's ``score`` (a bias-free Linear H -> K), the ``mean`` head
    (``score.1.weight``: running mean, then that Linear), or an MLP saved as ``score.<i>.weight/bias`` (Linear,
    activation, Linear). Heads apply to every position; the caller keeps the last real token's logits."""
    import torch
    from torch import nn

    from modpipe.models.heads import mean_head

    names = sorted(head_tensors)
    if set(names) <= {"score.weight", "score.bias"}:
        w = head_tensors["score.weight"]
        head = nn.Linear(hidden, w.shape[0], bias="score.bias" in head_tensors)
    elif names == ["score.1.weight"]:
        head = mean_head(hidden, head_tensors["score.1.weight"].shape[0])
    else:
        idx = sorted({int(n.split(".")[1]) for n in names if n.split(".")[1].isdigit()})
        if len(idx) != 2:
            raise ComposeError(f"unknown head layout: {names}")
        w0, w1 = head_tensors[f"score.{idx[0]}.weight"], head_tensors[f"score.{idx[1]}.weight"]
        layers: list = [None] * (idx[1] + 1)
        for i in range(idx[1] + 1):
            layers[i] = nn.Identity()
        layers[idx[0]] = nn.Linear(w0.shape[1], w0.shape[0], bias=f"score.{idx[0]}.bias" in head_tensors)
        layers[idx[0] + 1] = nn.GELU()
        layers[idx[1]] = nn.Linear(w1.shape[1], w1.shape[0], bias=f"score.{idx[1]}.bias" in head_tensors)
        head = nn.Sequential(*layers)
    state = {n[len("score."):]: t for n, t in head_tensors.items()}
    head.load_state_dict(state)
    return head.eval().requires_grad_(False).to(torch.float32)


def last_token_index(input_ids, pad_token_id: int):
    """(B,) index of each row's rightmost non-pad token (as transformers' sequence classifier pools)."""
    import torch

    non_pad = (input_ids != pad_token_id).to(torch.int32)
    positions = torch.arange(input_ids.shape[-1], device=input_ids.device, dtype=torch.int32)
    return (positions * non_pad).argmax(-1)


class MultiModuleModel:
    """One backbone + named LoRA task modules + their heads (see the module docstring).

    ``load(backbone, {task: module_dir})`` -> model; ``add``/``swap``/``remove`` a module in place;
    ``logits(task, ids, mask)``; ``mixed_logits(ids, mask, tasks)`` where row i uses ``tasks[i]``'s module.
    """

    def __init__(self, backbone: str | Path):
        from transformers import AutoModel, AutoTokenizer

        from modpipe.models.backbone import PAD_ID

        self.backbone = str(backbone)
        self.base = AutoModel.from_pretrained(self.backbone).eval().requires_grad_(False)  # decoder, no head
        self.tokenizer = AutoTokenizer.from_pretrained(self.backbone)
        self.pad_token_id = self.base.config.pad_token_id if self.base.config.pad_token_id is not None else PAD_ID
        self.hidden = self.base.config.hidden_size
        self.peft = None  # the PeftModel, created with the first module
        self.heads: dict = {}
        self.modules: dict[str, ModuleInfo] = {}
        self.merged: dict[str, dict] = {}  # merged adapters (no head of their own): name -> sources, weights

    @classmethod
    def load(cls, backbone: str | Path, module_dirs: dict[str, str | Path]) -> "MultiModuleModel":
        model = cls(backbone)
        for name, mdir in module_dirs.items():
            model.add(name, mdir)
        return model

    # ---------------------------------------------------------------- module management

    def add(self, name: str, module_dir: str | Path) -> None:
        """Attach a LoRA module under ``name`` (manifest checked against the backbone, weights by sha256)."""
        from peft import LoraConfig, PeftModel, set_peft_model_state_dict

        if name in self.modules:
            raise ComposeError(f"module {name!r} is already loaded; swap() replaces it")
        manifest = read_manifest(self.backbone, module_dir)
        lora_cfg = LoraConfig.from_pretrained(str(module_dir))
        # the bare backbone: no task type, no classifier to save; the head is kept in self.heads
        lora_cfg.task_type, lora_cfg.modules_to_save = None, None
        lora_cfg.inference_mode = True
        lora, head = split_module_weights(module_dir)
        if self.peft is None:
            self.peft = PeftModel(self.base, lora_cfg, adapter_name=name)
        else:
            self.peft.add_adapter(name, lora_cfg)
        result = set_peft_model_state_dict(self.peft, lora, adapter_name=name)
        missing = [k for k in result.missing_keys if f".{name}." in k or k.endswith(f".{name}")]
        if result.unexpected_keys or missing:
            raise ComposeError(f"{module_dir}: adapter does not fit the backbone (unexpected "
                               f"{list(result.unexpected_keys)[:3]}, missing {missing[:3]})")
        self.peft.eval().requires_grad_(False)
        self.heads[name] = build_head(head, self.hidden)
        self.modules[name] = ModuleInfo(name, Path(module_dir), list(manifest["labels"]), manifest)
        log.info("compose: %s <- %s (%d labels)", name, module_dir, len(manifest["labels"]))

    def remove(self, name: str) -> None:
        """Detach module ``name`` (its adapter and head); the backbone stays as it is."""
        self._known(name)
        if len(self.peft.peft_config) == 1:  # PEFT keeps one adapter: the last one goes with the wrapper
            self.peft.unload()
            self.peft = None
        else:
            self.peft.delete_adapter(name)
        del self.heads[name], self.modules[name]

    def merge(self, name: str, sources: Sequence[str], weights: Sequence[float]) -> None:
        """Add adapter ``name`` = the weighted average of the LoRA modules ``sources``: delta W = sum_i w_i dW_i.

        PEFT ``add_weighted_adapter(combination_type="cat")`` concatenates the A matrices (scaled by w_i and each
        adapter's alpha/r) and the B matrices, so B_cat A_cat is exactly sum_i w_i s_i B_i A_i (rank = sum of ranks).
        ``"linear"`` would average A and B separately, which is not the average of the deltas (B1A1 + B2A2 !=
        (B1 + B2)(A1 + A2)), and ``"svd"`` truncates; a hand-written delta average would have to be materialised as
        dense H x H matrices.  The merged adapter has no head of its own: ``logits(name, ..., head=task)``."""
        for src in sources:
            self._known(src)
        if len(sources) != len(weights) or not sources:
            raise ValueError("one weight per source module, at least one source")
        if name in self.modules or name in self.peft.peft_config:
            raise ComposeError(f"{name!r} already exists")
        self.peft.add_weighted_adapter(list(sources), [float(w) for w in weights], name, combination_type="cat")
        self.peft.eval().requires_grad_(False)
        self.merged[name] = {"sources": list(sources), "weights": [float(w) for w in weights]}

    def swap(self, name: str, module_dir: str | Path) -> None:
        """Replace module ``name`` by another module dir in place: the backbone is neither reloaded nor copied."""
        self._known(name)
        if len(self.modules) > 1:
            self.remove(name)
            self.add(name, module_dir)
            return
        tmp = f"{name}__swap"
        self.add(tmp, module_dir)  # PEFT needs one adapter to stay while the old one goes
        self.peft.delete_adapter(name)
        del self.heads[name], self.modules[name]
        self.add(name, module_dir)
        self.peft.delete_adapter(tmp)
        del self.heads[tmp], self.modules[tmp]

    def backbone_tensors(self) -> dict:
        """The backbone's own parameters (LoRA tensors excluded), by name: for identity checks."""
        return {n: p for n, p in self.base.named_parameters() if "lora_" not in n}

    def _known(self, name: str) -> None:
        if name not in self.modules:
            raise ComposeError(f"no module {name!r}; loaded: {sorted(self.modules)}")

    # ---------------------------------------------------------------- forward

    def encode(self, texts: Sequence[str], max_length: int):
        enc = self.tokenizer(list(texts), truncation=True, max_length=max_length, padding=True, return_tensors="pt")
        return enc["input_ids"], enc["attention_mask"]

    def hidden_states(self, input_ids, attention_mask, adapter: str | None = None, adapter_names=None):
        """(B, T, H) last hidden states with one adapter (or per-row ``adapter_names``; ``None`` = backbone)."""
        import torch

        with torch.no_grad():
            if self.peft is None or (adapter is None and adapter_names is None):
                if self.peft is None:
                    return self.base(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
                with self.peft.disable_adapter():
                    return self.peft(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            if adapter_names is not None:
                return self.peft(input_ids=input_ids, attention_mask=attention_mask,
                                 adapter_names=list(adapter_names)).last_hidden_state
            self.peft.set_adapter(adapter)
            return self.peft(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    def _head_logits(self, name: str, hidden, input_ids):
        """The head on every position, then the last real token (the classifier's order of operations)."""
        import torch

        logits = self.heads[name](hidden)  # (B, T, K)
        return logits[torch.arange(hidden.shape[0]), last_token_index(input_ids, self.pad_token_id)]  # (B, K)

    def logits(self, name: str, input_ids, attention_mask, head: str | None = None):
        """(B, K) logits of every row through adapter ``name`` and the head of ``head`` (default: ``name``'s own;
        a merged adapter needs one)."""
        import torch

        head = head or name
        self._known(head)
        if name not in self.modules and name not in self.merged:
            raise ComposeError(f"no module or merge {name!r}; loaded: {sorted(self.modules)}, merged: "
                               f"{sorted(self.merged)}")
        with torch.no_grad():
            return self._head_logits(head, self.hidden_states(input_ids, attention_mask, adapter=name), input_ids)

    def mixed_logits(self, input_ids, attention_mask, tasks: Sequence[str]) -> list:
        """Row i through module ``tasks[i]`` in one forward pass (PEFT ``adapter_names``), then that module's head;
        a list of (K_task,) tensors since tasks differ in label count."""
        import torch

        for t in set(tasks):
            self._known(t)
        if len(tasks) != input_ids.shape[0]:
            raise ValueError(f"{len(tasks)} task names for {input_ids.shape[0]} rows")
        with torch.no_grad():
            hidden = self.hidden_states(input_ids, attention_mask, adapter_names=tasks)  # (B, T, H)
            out: list = [None] * len(tasks)
            for t in sorted(set(tasks)):
                rows = [i for i, name in enumerate(tasks) if name == t]
                logits = self._head_logits(t, hidden[rows], input_ids[rows])  # (b, K_t)
                for j, i in enumerate(rows):
                    out[i] = logits[j]
            return out

    def predict_proba(self, name: str, texts: Sequence[str], max_length: int, batch_size: int = 32,
                      head: str | None = None):
        """N x K softmax probabilities of ``texts`` through adapter ``name`` (and the head of ``head``)."""
        import numpy as np
        import torch

        parts = []
        for i in range(0, len(texts), batch_size):
            ids, mask = self.encode(texts[i:i + batch_size], max_length)
            parts.append(torch.softmax(self.logits(name, ids, mask, head=head).float(), -1).numpy())
        return np.concatenate(parts) if parts else np.zeros((0, len(self.modules[head or name].labels)))

    def pooled(self, texts: Sequence[str], max_length: int, adapter: str | None, batch_size: int = 32):
        """(N, H) last-real-token hidden states through ``adapter`` (None: the bare backbone)."""
        import torch

        parts = []
        for i in range(0, len(texts), batch_size):
            ids, mask = self.encode(texts[i:i + batch_size], max_length)
            hidden = self.hidden_states(ids, mask, adapter=adapter)  # (B, T, H)
            parts.append(hidden[torch.arange(hidden.shape[0]), last_token_index(ids, self.pad_token_id)])
        return torch.cat(parts) if parts else torch.zeros((0, self.hidden))
