"""The shared backbone: a transformers Llama-style decoder built from ``ModelConfig``.

Exported with ``save_pretrained`` (safetensors) so ``AutoModel``/``AutoModelForSequenceClassification``
load it; the tokenizer is saved beside it as a ``PreTrainedTokenizerFast``.
"""

from __future__ import annotations

from pathlib import Path

from modpipe.config import ModelConfig

# Special tokens the curate stage's BPE tokenizer always defines, in this id order.
SPECIAL_TOKENS = ["<pad>", "<unk>", "<eos>"]
PAD_ID, UNK_ID, EOS_ID = 0, 1, 2


def build_config(cfg: ModelConfig, vocab_size: int):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_heads,
        max_position_embeddings=cfg.max_position_embeddings,
        pad_token_id=PAD_ID,
        bos_token_id=EOS_ID,
        eos_token_id=EOS_ID,
        tie_word_embeddings=True,
    )


def build_causal_lm(cfg: ModelConfig, vocab_size: int, seed: int = 0):
    """A freshly initialised ``LlamaForCausalLM`` (deterministic for a given seed)."""
    import torch
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    return LlamaForCausalLM(build_config(cfg, vocab_size))


def hf_tokenizer(tokenizer_json: str | Path):
    """Wrap a ``tokenizers`` JSON file as a transformers fast tokenizer with modpipe's special tokens."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_file=str(tokenizer_json),
        pad_token="<pad>",
        unk_token="<unk>",
        eos_token="<eos>",
        bos_token="<eos>",
        model_max_length=1 << 30,
    )


# --- model policy used by the pretrain loop (nanoGPT keeps these beside the model) ---


def count_params(model, non_embedding: bool = False) -> int:
    """Parameters, tied weights counted once; ``non_embedding`` drops the token embedding (Kaplan's N)."""
    n = sum(p.numel() for p in model.parameters())
    if non_embedding:
        n -= model.get_input_embeddings().weight.numel()
    return n


def optim_groups(model, weight_decay: float) -> list[dict]:
    """Two AdamW groups: decay on >= 2-D tensors (matmuls, embeddings), none on norms and biases."""
    params = [p for p in model.parameters() if p.requires_grad]
    return [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]


def flops_per_token(cfg: ModelConfig, n_params: int, seq_len: int) -> float:
    """Training FLOPs per token (PaLM appendix B, as in nanoGPT): 6N for the matmuls (forward + backward;
    with tied embeddings N includes the LM head) + 12 * layers * hidden * seq_len for attention scores."""
    return 6.0 * n_params + 12.0 * cfg.num_layers * cfg.hidden_size * seq_len


def estimate_mfu(flops_token: float, tokens_per_s: float, n_devices: int, peak_tflops: float = 989.0) -> float:
    """Model FLOPs utilisation: achieved FLOP/s over the devices' dense bf16 peak (989 TFLOP/s: H100 SXM)."""
    return flops_token * tokens_per_s / (n_devices * peak_tflops * 1e12)
