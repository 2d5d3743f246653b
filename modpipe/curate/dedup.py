"""Dedup: exact (content hash) and MinHash-LSH near-dedup, both global and deterministic.

Usage (Ray Data pipeline):

    dups = duplicate_ids(keys_df[["id", "key"]])                  # exact: {dup id: detail}
    sigs = ds.map_batches(MinHasher(c.minhash), batch_format="pandas").to_pandas()   # (id, sig) per alive row
    near = near_duplicate_ids(sigs[~sigs["id"].isin(dups)], c.minhash)            # {dup id: detail}
    Drop(dups) ... Drop(near, reason_code="near_duplicate", name="dedup_minhash")  # flag them (filters.Drop)

Exact: among rows with the same content key (``normalize.text_key``), the smallest id survives.  The verdict
needs only (id, key) of the alive rows, gathered on the driver (64 bytes a row).

Near: shingles = word n-grams (``minhash.ngram_size``) of the lower-cased words (``words.py``), each hashed to
uint64; ``bands * rows`` permutations are multiply-shift universal hashes ``(a*x + b) mod 2^64 >> 32`` with odd
``a`` drawn from a fixed seed, applied to all shingles at once in numpy (a (perms, shingles) matrix, min over
the shingle axis: no Python loop per permutation).  Signatures (uint32, 4 bytes a permutation) come back to
the driver, which hashes each band of ``rows`` values into a bucket key and groups by (band, key) with one
numpy sort per band.  Grouping on the driver rather than with a Ray Data groupby: the keys are
``bands * 8`` bytes a document (21k man pages x 20 bands = 3.4 MB, sorted in milliseconds), whereas a
Ray Data shuffle of the same rows costs seconds of scheduling on 2 cores; the driver holds
``bands*rows*4 + bands*8`` bytes a document, so this stays right up to ~10^7 documents per run.

Candidates (documents sharing a bucket) are verified: the estimated Jaccard (fraction of equal signature
values) must reach ``minhash.threshold``; verified pairs are merged with union-find and each cluster keeps its
smallest id.  The banding decides what is near (20 x 8: curve midpoint (1/20)^(1/8) = 0.69); verification at
the default threshold 0.6 removes the candidates that collided by chance (true Jaccard < 0.5) while costing
almost no recall (see ``config.MinHashConfig.threshold``).
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from modpipe.curate.words import NGRAM_MUL, fmix64, ngram_hashes, norm_words, word_hashes

log = logging.getLogger("modpipe.curate")

_EMPTY = np.uint32(0xFFFFFFFF)
_CHUNK = 1 << 21  # permutation x shingle cells per numpy pass (16 MiB of uint64)


def duplicate_ids(ids_keys: pd.DataFrame) -> dict[str, str]:
    """{duplicate id: detail naming the kept id} for a frame with columns id, key."""
    if ids_keys.empty:
        return {}
    df = ids_keys.sort_values(["key", "id"], kind="mergesort")
    first = df.groupby("key", sort=False)["id"].transform("first")
    dup = df["id"] != first
    return {i: f"same content as {k}" for i, k in zip(df.loc[dup, "id"], first[dup])}


def permutations(n_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(a, b), each (n_perm, 1) uint64; a is odd (multiply-shift needs an odd multiplier)."""
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 2**63, size=n_perm, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
    b = rng.integers(0, 2**63, size=n_perm, dtype=np.uint64)
    return a[:, None], b[:, None]


def shingles(text: str, n: int) -> np.ndarray:
    """uint64 hashes of the word n-grams (repeats kept: they do not change a minimum); a text shorter than n
    words is one shingle."""
    wh = word_hashes(norm_words(text))
    if len(wh) == 0:
        return wh
    return ngram_hashes(wh, min(n, len(wh)))


def signature(sh: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(n_perm,) uint32 MinHash signature of a shingle set (all 0xFFFFFFFF for an empty one)."""
    low = np.full(a.shape[0], np.iinfo(np.uint64).max, dtype=np.uint64)
    step = max(1, _CHUNK // a.shape[0])
    with np.errstate(over="ignore"):
        for i in range(0, len(sh), step):  # bounded memory for very long documents
            h = np.multiply(a, sh[None, i:i + step])  # (n_perm, chunk), wraps mod 2^64
            h += b
            np.minimum(low, h.min(axis=1), out=low)
    # the shift after the min: x -> x >> 32 never reorders, so min(h >> 32) = min(h) >> 32 (one pass less)
    return (low >> np.uint64(32)).astype(np.uint32) if len(sh) else np.full(a.shape[0], _EMPTY, dtype=np.uint32)


class MinHasher:
    """Ray Data ``map_batches`` UDF: alive rows (reason '') -> columns id, sig (uint32 signature as bytes)."""

    def __init__(self, cfg):
        self.cfg = cfg
        self.a, self.b = permutations(cfg.bands * cfg.rows, cfg.seed)

    def __call__(self, df: pd.DataFrame) -> pd.DataFrame:
        alive = df[df["reason"] == ""] if "reason" in df else df
        sigs = [signature(shingles(t, self.cfg.ngram_size), self.a, self.b).tobytes() for t in alive["text"]]
        return pd.DataFrame({"id": alive["id"].astype(str).to_numpy(), "sig": sigs})


class _UnionFind:
    def __init__(self, n: int):
        self.parent = np.arange(n)

    def find(self, i: int) -> int:
        p = self.parent
        root = i
        while p[root] != root:
            root = p[root]
        while p[i] != root:  # path compression
            p[i], i = root, p[i]
        return root

    def union(self, i: int, j: int) -> None:
        ri, rj = self.find(i), self.find(j)
        if ri != rj:  # the smaller index (= smaller id: rows are sorted by id) becomes the root
            self.parent[max(ri, rj)] = min(ri, rj)


def band_keys(sigs: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """(docs, bands) uint64 bucket keys: a hash of each band's ``rows`` signature values."""
    s = sigs[:, :bands * rows].reshape(len(sigs), bands, rows).astype(np.uint64)
    with np.errstate(over="ignore"):
        k = s[:, :, 0].copy()
        for j in range(1, rows):
            k = k * NGRAM_MUL + s[:, :, j]
        return fmix64(k)


def near_duplicate_ids(id_sigs: pd.DataFrame, cfg) -> dict[str, str]:
    """{near-duplicate id: detail naming its cluster's kept (smallest) id} from a frame with columns id, sig."""
    if len(id_sigs) < 2:
        return {}
    df = id_sigs.sort_values("id", kind="mergesort")
    ids = df["id"].to_numpy()
    sigs = np.frombuffer(b"".join(df["sig"]), dtype=np.uint32).reshape(len(df), -1)
    empty = (sigs == _EMPTY).all(axis=1)  # wordless documents never match anything
    keys = band_keys(sigs, cfg.bands, cfg.rows)
    uf = _UnionFind(len(ids))
    n_candidates = n_verified = 0
    for band in range(cfg.bands):
        order = np.argsort(keys[:, band], kind="stable")  # stable: ids ascending inside a bucket
        k = keys[order, band]
        starts = np.flatnonzero(np.r_[True, k[1:] != k[:-1]])
        sizes = np.diff(np.r_[starts, len(k)])
        for s, size in zip(starts[sizes > 1], sizes[sizes > 1]):
            members = order[s:s + size]
            members = members[~empty[members]]
            n_candidates += len(members) - 1 if len(members) else 0
            n_verified += _verify_bucket(members, sigs, cfg.threshold, cfg.max_heads_per_bucket, uf)
    roots = np.array([uf.find(i) for i in range(len(ids))])
    dup = np.flatnonzero(roots != np.arange(len(ids)))
    jac = (sigs[dup] == sigs[roots[dup]]).mean(axis=1) if len(dup) else np.empty(0)
    log.info("minhash: %d docs, %d candidate and %d verified pairs, %d near-duplicates in %d clusters",
             len(ids), n_candidates, n_verified, len(dup), len(set(roots[dup].tolist())))
    return {ids[i]: f"near-duplicate of {ids[r]} (est. Jaccard {j:.2f})" for i, r, j in zip(dup, roots[dup], jac)}


def _verify_bucket(members: np.ndarray, sigs: np.ndarray, threshold: float, max_heads: int,
                   uf: _UnionFind) -> int:
    """Greedy clustering inside one bucket: the first (smallest id) member is compared with all others at once;
    those within ``threshold`` join it; repeat with the first unmatched member, at most ``max_heads`` times."""
    verified = 0
    rest = members
    for _ in range(max_heads):
        if len(rest) < 2:
            break
        head, others = rest[0], rest[1:]
        est = (sigs[others] == sigs[head]).mean(axis=1)
        ok = est >= threshold
        for j in others[ok]:
            uf.union(int(head), int(j))
        verified += int(ok.sum())
        rest = others[~ok]
    return verified
