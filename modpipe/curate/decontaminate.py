"""Remove from the pretraining text every document that overlaps a held-out task example.

Usage:

    decon = from_tasks(task_list, ["val", "test"], cfg.curate.decontam)   # index built once, on the driver
    df = decon(df)      # contaminated rows: reason "contaminated", detail names task/split/example id and why
    decon.name, decon.reasons

Two kinds of match, both against every task's val/test examples:
- exact: by id, and by content key (``normalize.text_key``) of the whole normalised text and of its prefix
  truncated to each task's ``max_chars`` (task examples are ``normalize(page)[:max_chars]``), so a page whose
  truncation is a val/test example goes too;
- n-gram (GPT-3 style, ``decontam.n`` words, default 13): the lower-cased regex words (``words.py``) of every
  example give a sorted array of uint64 n-gram hashes; a document is contaminated when any of its n-grams is in
  it (one ``np.searchsorted`` per document).  Examples shorter than n words only match exactly.  An n-gram found
  in more than ``decontam.max_example_freq`` distinct task examples (train included) is text that man pages
  share (the ATTRIBUTES boilerplate, licence footers, templated flags, untranslated paragraphs of a translated
  page) rather than text specific to one held-out example, and is ignored, as GPT-3 ignored frequent 13-grams.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from modpipe.curate.base import Step, flag
from modpipe.curate.normalize import text_key
from modpipe.curate.words import ngram_hashes, norm_words, text_words, word_hashes


@dataclass
class NgramIndex:
    """Sorted n-gram hashes of the held-out examples and, per hash, the first example that holds it."""

    n: int
    hashes: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.uint64))
    owner: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int32))
    """Index into ``labels`` of the first example holding each hash."""
    labels: list[str] = field(default_factory=list)

    @classmethod
    def build(cls, held_out: list[tuple[str, str]], n: int, max_example_freq: int,
              others: list[str] = ()) -> "NgramIndex":
        """``held_out``: (label "task/split/id", text) in a deterministic order; ``others``: texts of the other
        (train) examples, which count towards an n-gram's example frequency but are not indexed.  Texts are
        counted once however many tasks/splits hold them."""
        labels = [label for label, _ in held_out]
        seen: set[str] = set()
        texts, owners = [], []
        for i, text in [(i, t) for i, (_, t) in enumerate(held_out)] + [(-1, t) for t in others]:
            if text not in seen:
                seen.add(text)
                texts.append(text)
                owners.append(i)
        per_text = [np.unique(ngram_hashes(word_hashes(norm_words(t)), n)) for t in texts]
        if not sum(len(h) for h in per_text):
            return cls(n, labels=labels)
        h = np.concatenate(per_text)
        ex = np.repeat(np.arange(len(per_text), dtype=np.int32), [len(x) for x in per_text])
        order = np.lexsort((ex, h))  # by hash, then text: held-out texts come first, so they own a run
        h, ex = h[order], ex[order]
        start = np.flatnonzero(np.r_[True, h[1:] != h[:-1]])
        freq = np.diff(np.r_[start, len(h)])  # distinct texts holding the hash (unique per text above)
        owner = np.asarray(owners, dtype=np.int32)[ex[start]]
        keep = (freq <= max_example_freq) & (owner >= 0)
        return cls(n, h[start[keep]], owner[keep], labels)

    def match(self, text: str) -> tuple[str, int] | None:
        """(label of the example holding the first shared n-gram, number of shared n-grams) or None."""
        if len(self.hashes) == 0:
            return None
        h = ngram_hashes(text_words(text).hashes, self.n)
        if len(h) == 0:
            return None
        idx = np.minimum(np.searchsorted(self.hashes, h), len(self.hashes) - 1)
        hit = np.flatnonzero(self.hashes[idx] == h)
        if len(hit) == 0:
            return None
        return self.labels[int(self.owner[idx[hit[0]]])], len(hit)


@dataclass
class Decontaminate(Step):
    ids: dict[str, str] = field(default_factory=dict)
    """task example id -> "task/split/example id"."""
    keys: dict[str, str] = field(default_factory=dict)
    """content key of the example text -> "task/split/example id"."""
    prefix_lengths: list[int] = field(default_factory=list)
    ngrams: NgramIndex | None = None
    name: str = "decontaminate"
    reasons: tuple[str, ...] = ("contaminated",)

    def why(self, rid: str, text: str, key: str) -> str | None:
        if rid in self.ids:
            return f"id in {self.ids[rid]}"
        if key in self.keys:
            return f"text in {self.keys[key]}"
        for n in self.prefix_lengths:
            if len(text) > n:
                k = text_key(text[:n].strip())
                if k in self.keys:
                    return f"first {n} chars in {self.keys[k]}"
        if self.ngrams is not None:
            found = self.ngrams.match(text)
            if found is not None:
                return f"{found[1]} shared {self.ngrams.n}-gram(s), first with {found[0]}"
        return None

    def apply(self, df: pd.DataFrame, alive: np.ndarray) -> pd.DataFrame:
        ids, texts = df["id"].to_numpy(), df["text"].to_numpy()
        keys = df["key"].to_numpy() if "key" in df else None
        hits = []
        for pos in np.flatnonzero(alive):
            key = keys[pos] if keys is not None else text_key(texts[pos])
            why = self.why(ids[pos], texts[pos], key)
            if why:
                hits.append((pos, why))
        if not hits:
            return df
        pos, details = zip(*hits)
        return flag(df, pos, "contaminated", details)


def from_tasks(tasks, splits: list[str], cfg=None) -> Decontaminate:
    """The decontamination step for these tasks' ``splits``; ``cfg``: ``CurateConfig.decontam`` (default: its
    defaults, n-grams of 13 words on)."""
    if cfg is None:
        from modpipe.config import DecontamConfig

        cfg = DecontamConfig()
    ids, keys, lengths, held_out, others = {}, {}, set(), [], []
    for task in tasks:
        for split in splits:
            for row in task.splits.get(split, []):
                where = f"{task.name}/{split}/{row['id']}"
                ids.setdefault(row["id"], where)
                keys.setdefault(row["key"], where)
                held_out.append((where, row["text"]))
        others += [row["text"] for split in sorted(set(task.splits) - set(splits)) for row in task.splits[split]]
        lengths.add(task.max_chars)
    index = NgramIndex.build(held_out, cfg.n, cfg.max_example_freq, others) if cfg.ngram else None
    return Decontaminate(ids=ids, keys=keys, prefix_lengths=sorted(lengths), ngrams=index)
