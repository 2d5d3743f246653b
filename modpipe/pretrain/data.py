"""Token rows for one data-parallel rank, and resumable streams of micro-batches over them.

Curate writes Parquet shards whose ``input_ids`` rows are exactly ``seq_len`` tokens (EOS-separated packing), in
row groups of ``rows_per_row_group`` rows.

``ShardStream`` (what pretraining reads): each rank reads only its share of the shards, a row-group piece at a
time, in an order fixed by (seed, epoch, rank, world size); its read position goes into the checkpoint, so a
resumed run sees the same batches, and its memory does not grow with the corpus.

``read_rank_rows`` + ``BatchStream`` (the whole share in memory; the held-out rows and the overhead benchmark):
rank r of w keeps global rows r, r+w, r+2w, ... of the shards in manifest order; the order within an epoch is a
permutation seeded by (seed, rank, epoch), so step k always sees the same batch.
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


def _good_rows(col, seq_len: int, vocab_size: int) -> tuple[np.ndarray, int]:
    """(rows (N, seq_len) int64 of ``col`` that are well formed, number left out) for one Arrow list column."""
    n = len(col)
    if n == 0:
        return np.zeros((0, seq_len), dtype=np.int64), 0
    lengths = np.diff(col.offsets.to_numpy())
    good = (lengths == seq_len) & ~col.is_null().to_numpy(zero_copy_only=False)
    keep = np.flatnonzero(good)
    tokens = col.take(keep).flatten().to_numpy().astype(np.int64).reshape(len(keep), seq_len)
    in_vocab = ((tokens >= 0) & (tokens < vocab_size)).all(axis=1)
    return tokens[in_vocab], n - int(in_vocab.sum())


class ShardStream:
    """Micro-batches ``(B, T)`` for one rank, read from the shards a row-group piece at a time, forever.

    The unit of reading is a piece of a row group: each row group in one piece, or in ``ceil(world / row groups)``
    pieces when the shards hold fewer row groups than ranks (a tiny corpus), so every rank has one. Epoch ``e``
    permutes the units with ``rng(seed, e, world)`` and rank r takes every world-th one from r: the ranks read
    disjoint parts of the data within an epoch, and a rank opens only its own units. Within a unit the rows are
    shuffled with ``rng(seed, e, rank, world, unit)``. Malformed rows (see ``read_rank_rows``) are left out as
    they come. Batches run on across units and epochs (no ragged tail is dropped).

    Memory: one unit (at most one row group: curate's ``rows_per_row_group`` rows) plus less than one batch, so it
    does not grow with the corpus; only the shards' Parquet footers are read up front.

    ``position()`` is where the next batch starts, ``{"epoch", "unit", "row"}`` (plain ints, for the checkpoint);
    ``iter_from(position)`` yields the same batches an uninterrupted stream would from there.
    """

    def __init__(self, shards: list[str | Path], seq_len: int, vocab_size: int, batch_size: int, seed: int,
                 rank: int, world_size: int):
        import pyarrow.parquet as pq

        self.shards = [str(s) for s in shards]
        self.seq_len, self.vocab_size, self.seed = seq_len, vocab_size, seed
        self.rank, self.world = rank, world_size
        groups = []  # (shard index, row group, rows)
        for i, path in enumerate(self.shards):
            meta = pq.ParquetFile(path).metadata
            groups += [(i, g, meta.row_group(g).num_rows) for g in range(meta.num_row_groups)
                       if meta.row_group(g).num_rows > 0]
        if not groups:
            raise ValueError("no rows in the training shards")
        pieces = -(-world_size // len(groups))  # ceil: at least one unit per rank
        self.units = []  # (shard index, row group, first row, stop row)
        for i, g, n in groups:
            bounds = np.linspace(0, n, pieces + 1).astype(int)
            self.units += [(i, g, int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]
        if len(self.units) < world_size:
            raise ValueError(f"{sum(n for *_, n in groups)} training rows cannot feed {world_size} ranks")
        first = sum(b - a for _, _, a, b in self.epoch_units(0))
        self.batch_size = max(1, min(batch_size, first))  # a tiny corpus still trains, with smaller batches
        self.skipped = 0  # malformed rows met so far by this process
        self._pos = {"epoch": 0, "unit": 0, "row": 0}

    def epoch_units(self, epoch: int) -> list[tuple[int, int, int, int]]:
        """This rank's units in epoch ``epoch``, in reading order."""
        order = np.random.default_rng([self.seed, epoch, self.world]).permutation(len(self.units))
        return [self.units[k] for k in order[self.rank::self.world]]

    def _read(self, epoch: int, j: int, unit: tuple[int, int, int, int]) -> np.ndarray:
        import pyarrow.parquet as pq

        i, g, a, b = unit
        col = pq.ParquetFile(self.shards[i]).read_row_group(g, columns=["input_ids"]).column(0)
        rows, bad = _good_rows(col.slice(a, b - a).combine_chunks(), self.seq_len, self.vocab_size)
        self.skipped += bad
        order = np.random.default_rng([self.seed, epoch, self.rank, self.world, j]).permutation(len(rows))
        return rows[order]  # (n, T)

    def position(self) -> dict[str, int]:
        return dict(self._pos)

    def iter_from(self, position: dict[str, int] | None = None):
        """An iterator of (epoch, batch) from ``position`` (a ``position()`` value; ``None``: the very first batch);
        ``position()`` is ``position`` until it yields."""
        given = position or {}
        pos = {k: int(given.get(k, 0)) for k in ("epoch", "unit", "row")}
        self._pos = pos
        return self._batches(pos["epoch"], pos["unit"], pos["row"])

    def _batches(self, epoch: int, j: int, row: int):
        parts: list[np.ndarray] = []  # rows of the batch being filled
        have, start = 0, (epoch, j, row)  # where that batch starts
        empty_epochs = 0
        while True:
            units = self.epoch_units(epoch)
            got = False
            while j < len(units):
                rows = self._read(epoch, j, units[j])
                while row < len(rows):
                    if have == 0:
                        start = (epoch, j, row)
                    take = rows[row:row + self.batch_size - have]
                    parts.append(take)
                    have, row = have + len(take), row + len(take)
                    got = True
                    if have == self.batch_size:
                        e, u, r = (epoch, j, row) if row < len(rows) else (epoch, j + 1, 0)
                        self._pos = {"epoch": e, "unit": u, "row": r}  # the next batch starts here
                        yield start[0], np.concatenate(parts)  # (B, T)
                        parts, have = [], 0
                j, row = j + 1, 0
            empty_epochs = 0 if got else empty_epochs + 1
            if empty_epochs >= 2:
                raise ValueError(f"rank {self.rank}: no well-formed training row in two epochs running")
            epoch, j = epoch + 1, 0
