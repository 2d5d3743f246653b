"""Token rows for one data-parallel rank, and a resumable stream of micro-batches over them.

Curate writes Parquet shards whose ``input_ids`` rows are exactly ``seq_len`` tokens (EOS-separated packing).
Rank r of w keeps global rows r, r+w, r+2w, ... of the shards in manifest order, so the ranks see disjoint data
and the split does not depend on how rows are spread over shards. The order within an epoch is a permutation
seeded by (seed, rank, epoch): step k always sees the same batch, which makes resume exact.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def read_rank_rows(
    shards: list[str | Path], seq_len: int, rank: int, world_size: int, vocab_size: int,
) -> tuple[np.ndarray, int]:
    """(rows (N, seq_len) int64 for this rank, number of malformed rows skipped).

    A row is malformed when it is null, not exactly ``seq_len`` long or holds an id outside the vocabulary;
    such rows are counted and left out (the contracts stage reports them), never trained on.
    """
    import pyarrow.parquet as pq

    parts, offset, skipped = [], 0, 0
    for path in shards:
        col = pq.read_table(path, columns=["input_ids"]).column("input_ids").combine_chunks()
        n = len(col)
        start = (rank - offset) % world_size  # first global row of this shard that belongs to this rank
        offset += n
        if n == 0:
            continue
        lengths = np.diff(col.offsets.to_numpy())
        good = (lengths == seq_len) & ~col.is_null().to_numpy(zero_copy_only=False)
        mine = np.zeros(n, dtype=bool)
        mine[start::world_size] = True
        skipped += int((mine & ~good).sum())
        keep = np.flatnonzero(mine & good)
        if len(keep) == 0:
            continue
        tokens = col.take(keep).flatten().to_numpy().astype(np.int64).reshape(len(keep), seq_len)  # (N_shard, T)
        in_vocab = ((tokens >= 0) & (tokens < vocab_size)).all(axis=1)
        skipped += int((~in_vocab).sum())
        parts.append(tokens[in_vocab])
    rows = np.concatenate(parts) if parts else np.zeros((0, seq_len), dtype=np.int64)
    return rows, skipped


class BatchStream:
    """Micro-batches ``(B, T)`` over ``rows`` forever (epoch after epoch), starting at any micro-step."""

    def __init__(self, rows: np.ndarray, batch_size: int, seed: int, rank: int):
        if len(rows) == 0:
            raise ValueError(f"rank {rank} has no training rows")
        self.rows = rows
        self.batch_size = min(batch_size, len(rows))  # a tiny corpus still trains, with smaller batches
        self.per_epoch = len(rows) // self.batch_size  # drop the ragged tail of each epoch
        self.seed, self.rank = seed, rank

    def _order(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, self.rank, epoch]).permutation(len(self.rows))

    def iter_from(self, micro_step: int):
        """Yield (epoch, batch) from global micro-step ``micro_step`` on (0 = the very first batch)."""
        epoch, i = divmod(micro_step, self.per_epoch)
        while True:
            order = self._order(epoch)
            for j in range(i, self.per_epoch):
                idx = order[j * self.batch_size:(j + 1) * self.batch_size]
                yield epoch, self.rows[idx]  # (B, T)
            epoch, i = epoch + 1, 0
