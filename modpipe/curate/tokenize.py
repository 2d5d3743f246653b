"""Byte-level BPE tokenizer (HF ``tokenizers``) trained once on the curated docs (``passes.encode_shard``
encodes them with ``encode_batch``, shard by shard, on Ray Data).

Special tokens <pad>, <unk>, <eos> get ids 0, 1, 2 (``models.backbone.SPECIAL_TOKENS``).  Byte-level
pre-tokenisation means no text ever needs <unk>.  Training is deterministic for the same docs in the same
order (docs are fed shard by shard, in id order inside a shard).
"""

from __future__ import annotations

from typing import Iterable

from modpipe.models.backbone import SPECIAL_TOKENS

MIN_VOCAB = 256 + len(SPECIAL_TOKENS)


def train_tokenizer(texts: Iterable[str], vocab_size: int, min_frequency: int = 2, length: int | None = None):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    if vocab_size < MIN_VOCAB:
        raise ValueError(f"curate.vocab_size={vocab_size} < {MIN_VOCAB} (256 bytes + {len(SPECIAL_TOKENS)} specials)")
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer, length=length)
    for i, t in enumerate(SPECIAL_TOKENS):
        assert tok.token_to_id(t) == i, f"special token {t} has id {tok.token_to_id(t)}, expected {i}"
    return tok
