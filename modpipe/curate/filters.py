"""The quality filters and the dedup verdict step, each a ``base`` step that writes one method.

    for step in [Drop(dups), from_tasks(...), *quality_filters(cfg.curate), PiiScrub.from_config(cfg.curate.pii)]:
        df = step.run(df, stats)   # df: id, text, reason ('' = alive), detail, n_chars, n_words, ...

A filter's thresholds are its fields (defaults: the man-page values of ``config_curate``), filled from its config
section by ``from_config``; ``None`` disables a rule; every rule leaves a stable reason code (``reasons``).

``quality_filters(c)`` = length -> letters share -> language -> Gopher quality -> Gopher repetition, in that
order (the stop-word rule reads the language the language step detected).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from modpipe.curate.base import Filter, RuleFilter, Step, flag
from modpipe.curate.language import LanguageFilter
from modpipe.curate.words import NGRAM_MUL, text_words, word_hashes


@dataclass
class Length(Step):
    """Characters of the normalised text, both bounds (two reason codes)."""

    min_chars: int | None = 200
    max_chars: int | None = 100_000
    name: str = "length"

    @property
    def reasons(self):  # two codes
        return ("too_short", "too_long")

    def apply(self, df, alive):
        n = df["n_chars"].to_numpy() if "n_chars" in df else np.array([len(t) for t in df["text"]])
        short = alive & (n < self.min_chars) if self.min_chars is not None else np.zeros(len(df), bool)
        long_ = alive & (n > self.max_chars) if self.max_chars is not None else np.zeros(len(df), bool)
        df = flag(df, np.flatnonzero(short), "too_short", [f"{x} chars < {self.min_chars}" for x in n[short]])
        return flag(df, np.flatnonzero(long_), "too_long", [f"{x} chars > {self.max_chars}" for x in n[long_]])


_LETTER_RUNS = re.compile(r"[^\W\d_]+")


def letter_share(text: str) -> float:
    """Letters / non-blank characters (``normalize.alpha_fraction``, ~2x faster: one regex match per run of
    letters, not per character, and blanks counted by ``str.split``)."""
    nonblank = sum(map(len, text.split()))
    return sum(map(len, _LETTER_RUNS.findall(text))) / nonblank if nonblank else 0.0


@dataclass
class AlphaFraction(Filter):
    """Letters / non-blank characters (cheap junk filter: number tables, binary residue)."""

    min_alpha_frac: float | None = 0.55
    name: str = "alpha_fraction"
    reason: str = "low_alpha_frac"

    def keep(self, df):
        if self.min_alpha_frac is None:
            return np.ones(len(df), bool), [""] * len(df)
        frac = np.array([letter_share(t) for t in df["text"]])
        return frac >= self.min_alpha_frac, [f"letters {f:.3f} < {self.min_alpha_frac}" for f in frac]


_BULLET = re.compile(r"^[ \t]*[\u2022\u2023\u25e6\u2043\u00b7*\-\u2013][ \t]", re.M)
_ELLIPSIS_END = re.compile(r"(?:\.\.\.|\u2026)[ \t]*$", re.M)


@dataclass
class GopherQuality(RuleFilter):
    """Gopher quality rules (Rae et al. 2021, A1) on lower-cased regex words (``words.text_words``): word count,
    mean word length, hash / ellipsis per word, bullet and ellipsis-ending lines, words holding a letter, stop
    words.  Defaults: man-page thresholds, see ``config.GopherConfig``."""

    min_words: int | None = 30
    max_words: int | None = 100_000
    min_mean_word_len: float | None = 2.5
    max_mean_word_len: float | None = 12.0
    max_symbol_word_ratio: float | None = 0.2
    symbols: list[str] = field(default_factory=lambda: ["#", "...", "\u2026"])
    max_bullet_line_frac: float | None = 0.9
    max_ellipsis_line_frac: float | None = 0.3
    min_alpha_word_frac: float | None = 0.5
    min_stop_words: int | None = 2
    stop_words: list[str] = field(default_factory=lambda: ["the", "be", "to", "of", "and", "that", "have", "with"])
    stop_words_languages: list[str] | None = field(default_factory=lambda: ["en"])
    name: str = "gopher_quality"
    reasons: tuple[str, ...] = ("gopher_short_doc", "gopher_long_doc", "gopher_mean_word_len_low",
                                "gopher_mean_word_len_high", "gopher_symbol_ratio", "gopher_bullet_lines",
                                "gopher_ellipsis_lines", "gopher_alpha_words", "gopher_stop_words")

    def __post_init__(self):
        self._stop = np.unique(word_hashes(sorted({w.lower() for w in self.stop_words})))
        self._stop_langs = set(self.stop_words_languages or [])
        # "..." and "…" are one symbol (the ellipsis); every other symbol is its own
        ell = [s for s in self.symbols if s in ("...", "\u2026")]
        self._symbol_groups = [[s] for s in self.symbols if s not in ell] + ([ell] if ell else [])

    @classmethod
    def from_config(cls, c) -> "GopherQuality":
        g = c.gopher
        return cls(min_words=c.min_words, max_words=g.max_words, min_mean_word_len=g.min_mean_word_len,
                   max_mean_word_len=g.max_mean_word_len, max_symbol_word_ratio=c.max_symbol_word_ratio,
                   symbols=list(c.symbols), max_bullet_line_frac=g.max_bullet_line_frac,
                   max_ellipsis_line_frac=g.max_ellipsis_line_frac, min_alpha_word_frac=g.min_alpha_word_frac,
                   min_stop_words=g.min_stop_words, stop_words=list(g.stop_words),
                   stop_words_languages=list(g.stop_words_languages))

    def check(self, text: str, lang: str) -> tuple[str, str] | None:
        tw = text_words(text)
        n = len(tw.hashes)
        if self.min_words is not None and n < self.min_words:
            return "gopher_short_doc", f"{n} words < {self.min_words}"
        if self.max_words is not None and n > self.max_words:
            return "gopher_long_doc", f"{n} words > {self.max_words}"
        if self.min_mean_word_len is not None or self.max_mean_word_len is not None:
            if n > tw.n_cjk:  # a CJK character is a word of one character by definition: left out
                mean = (int(tw.lengths.sum()) - tw.n_cjk) / (n - tw.n_cjk)
                if self.min_mean_word_len is not None and mean < self.min_mean_word_len:
                    return "gopher_mean_word_len_low", f"mean word length {mean:.2f} < {self.min_mean_word_len}"
                if self.max_mean_word_len is not None and mean > self.max_mean_word_len:
                    return "gopher_mean_word_len_high", f"mean word length {mean:.2f} > {self.max_mean_word_len}"
        if self.max_symbol_word_ratio is not None:
            for group in self._symbol_groups:
                ratio = sum(text.count(s) for s in group) / max(n, 1)
                if ratio > self.max_symbol_word_ratio:
                    return "gopher_symbol_ratio", f"'{group[0]}' per word {ratio:.3f} > {self.max_symbol_word_ratio}"
        if self.max_bullet_line_frac is not None or self.max_ellipsis_line_frac is not None:
            n_lines = text.count("\n") + 1
            if self.max_bullet_line_frac is not None:
                frac = len(_BULLET.findall(text)) / n_lines
                if frac > self.max_bullet_line_frac:
                    return "gopher_bullet_lines", f"bullet lines {frac:.3f} > {self.max_bullet_line_frac}"
            if self.max_ellipsis_line_frac is not None:
                frac = len(_ELLIPSIS_END.findall(text)) / n_lines
                if frac > self.max_ellipsis_line_frac:
                    return "gopher_ellipsis_lines", f"ellipsis-ending lines {frac:.3f} > {self.max_ellipsis_line_frac}"
        if self.min_alpha_word_frac is not None:
            frac = tw.n_letter / n if n else 0.0
            if frac < self.min_alpha_word_frac:
                return "gopher_alpha_words", f"words with a letter {frac:.3f} < {self.min_alpha_word_frac}"
        if self.min_stop_words is not None and (not lang or lang in self._stop_langs):
            found = int(np.isin(self._stop, tw.hashes).sum())
            if found < self.min_stop_words:
                return "gopher_stop_words", f"{found} stop words < {self.min_stop_words}"
        return None


_PARA_SPLIT = re.compile(r"\n{2,}")
_LINE_SPLIT = re.compile(r"\n+")


def _dup_fracs(parts: list[str]) -> tuple[float, int]:
    """(share of parts that repeat an earlier one, characters in those repeats)."""
    seen: set[str] = set()
    n_dup = chars = 0
    for p in parts:
        if p in seen:
            n_dup += 1
            chars += len(p)
        else:
            seen.add(p)
    return n_dup / max(len(parts), 1), chars


_POS_BITS = 24
_POS_MASK = np.uint64((1 << _POS_BITS) - 1)


def _runs(h: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(positions ordered by hash then position, True where a new hash starts): equal hashes side by side.

    One ``np.sort`` of (high 40 bits of the hash | position) instead of an argsort (5x slower in numpy for
    uint64); two different n-grams collide on 40 bits with odds ~k^2 / 2^41 (5e-7 for 1000 n-grams).
    """
    k = len(h)
    if k >= 1 << _POS_BITS:  # beyond 16M words: the plain (slower) way
        order = np.argsort(h, kind="stable")
        hs = h[order]
    else:
        key = (h & ~_POS_MASK) | np.arange(k, dtype=np.uint64)
        key.sort()
        order = (key & _POS_MASK).astype(np.int64)
        hs = key >> np.uint64(_POS_BITS)
    new = np.empty(k, dtype=bool)
    new[0] = True
    np.not_equal(hs[1:], hs[:-1], out=new[1:])
    return order, new


def ngram_stats(wh: np.ndarray, wl: np.ndarray, ns: list[int]) -> dict[int, tuple[float, float]]:
    """{n: (top n-gram char share, repeated n-gram char share)} of a document's words, over its word characters.

    ``wh``/``wl``: word hashes / lengths.  Top: count x characters of the most frequent n-gram (if it repeats).
    Repeated: characters of the words covered by any occurrence of an n-gram after its first, overlaps counted
    once (Gopher's definition; datatrove skips ahead instead).  All numpy: the n-gram hashes grow by one word
    per n (h_n = h_(n-1) * M + w), one sort per n.
    """
    m = len(wh)
    total = float(wl.sum())
    csum = np.concatenate([[0], np.cumsum(wl)])
    out: dict[int, tuple[float, float]] = {}
    h = wh.copy()
    with np.errstate(over="ignore"):
        for n in range(1, max(ns, default=0) + 1):
            if n > 1:
                h = h[:-1] * NGRAM_MUL + wh[n - 1:]
            if n not in ns:
                continue
            k = len(h)
            if k < 2 or total == 0:
                out[n] = (0.0, 0.0)
                continue
            order, new = _runs(h)
            starts = np.flatnonzero(new)
            sizes = np.diff(np.append(starts, k))
            j = int(sizes.argmax())
            top = 0.0
            if sizes[j] > 1:
                i = int(order[starts[j]])
                top = float(sizes[j]) * float(csum[i + n] - csum[i]) / total
            repeat = order[~new]  # every occurrence after the first (positions ascend inside a run)
            if len(repeat) == 0:
                out[n] = (top, 0.0)
                continue
            delta = np.bincount(repeat, minlength=m + 1) - np.bincount(repeat + n, minlength=m + 1)
            covered = np.cumsum(delta)[:m] > 0
            out[n] = (top, float(wl[covered].sum()) / total)
    return out


@dataclass
class GopherRepetition(RuleFilter):
    """Gopher repetition rules: duplicate lines / paragraphs (by count, by characters), top n-gram character
    share (n = 2..4), repeated n-gram character share (n = 5..10).  Defaults: man-page thresholds, see
    ``config.RepetitionConfig``."""

    max_dup_line_frac: float | None = 0.5
    max_dup_para_frac: float | None = 0.5
    max_dup_line_char_frac: float | None = 0.4
    max_dup_para_char_frac: float | None = 0.5
    top_ngram_fracs: dict[int, float] = field(default_factory=lambda: {2: 0.3, 3: 0.3, 4: 0.3})
    dup_ngram_fracs: dict[int, float] = field(
        default_factory=lambda: {5: 0.55, 6: 0.53, 7: 0.51, 8: 0.49, 9: 0.47, 10: 0.45})
    name: str = "gopher_repetition"

    @classmethod
    def from_config(cls, r) -> "GopherRepetition":
        return cls(r.max_dup_line_frac, r.max_dup_para_frac, r.max_dup_line_char_frac, r.max_dup_para_char_frac,
                   dict(r.top_ngram_fracs), dict(r.dup_ngram_fracs))

    @property
    def reasons(self):
        return ("dup_para_frac", "dup_para_char_frac", "dup_line_frac", "dup_line_char_frac",
                *[f"top_{n}_gram" for n in sorted(self.top_ngram_fracs)],
                *[f"dup_{n}_gram" for n in sorted(self.dup_ngram_fracs)])

    def check(self, text: str, lang: str) -> tuple[str, str] | None:
        n_chars = max(len(text), 1)
        for kind, split, max_frac, max_char in (
                ("para", _PARA_SPLIT, self.max_dup_para_frac, self.max_dup_para_char_frac),
                ("line", _LINE_SPLIT, self.max_dup_line_frac, self.max_dup_line_char_frac)):
            if max_frac is None and max_char is None:
                continue
            frac, chars = _dup_fracs(split.split(text))
            if max_frac is not None and frac > max_frac:
                return f"dup_{kind}_frac", f"repeated {kind}s {frac:.3f} > {max_frac}"
            if max_char is not None and chars / n_chars > max_char:
                return f"dup_{kind}_char_frac", f"characters in repeated {kind}s {chars / n_chars:.3f} > {max_char}"
        if not self.top_ngram_fracs and not self.dup_ngram_fracs:
            return None
        tw = text_words(text)
        wh, wl = tw.hashes, tw.lengths
        dup_ns = sorted(self.dup_ngram_fracs)
        first = sorted(set(self.top_ngram_fracs) | set(dup_ns[:1]))
        stats = ngram_stats(wh, wl, first)
        # words covered by repeated n-grams shrink as n grows (a repeat of an (n+1)-gram is made of repeated
        # n-grams), so when the smallest n is under every larger n's threshold, those need no sort at all
        if len(dup_ns) > 1 and stats[dup_ns[0]][1] > min(self.dup_ngram_fracs[n] for n in dup_ns[1:]):
            stats.update(ngram_stats(wh, wl, dup_ns[1:]))
        for n, (top, dup) in sorted(stats.items()):
            if n in self.top_ngram_fracs and top > self.top_ngram_fracs[n]:
                return f"top_{n}_gram", f"top {n}-gram characters {top:.3f} > {self.top_ngram_fracs[n]}"
            if n in self.dup_ngram_fracs and dup > self.dup_ngram_fracs[n]:
                return f"dup_{n}_gram", f"repeated {n}-gram characters {dup:.3f} > {self.dup_ngram_fracs[n]}"
        return None


@dataclass
class Drop(Step):
    """Flag the rows whose id is in ``ids`` with ``reason_code`` (detail from the dict): dedup verdicts."""

    ids: dict[str, str]
    reason_code: str = "duplicate"
    name: str = "dedup_exact"

    @property
    def reasons(self):
        return (self.reason_code,)

    def apply(self, df, alive):
        hit = np.flatnonzero(alive & df["id"].isin(self.ids.keys()).to_numpy())
        return flag(df, hit, self.reason_code, [self.ids[i] for i in df["id"].to_numpy()[hit]])


def quality_filters(c) -> list[Step]:
    """The filter chain from ``CurateConfig`` (language ID first: the stop-word rule reads its answer)."""
    chain: list[Step] = [Length(c.min_chars, c.max_chars), AlphaFraction(c.min_alpha_frac)]
    if c.language.enabled:
        chain.append(LanguageFilter.from_config(c.language))
    chain.append(GopherQuality.from_config(c))
    if c.repetition.enabled:
        chain.append(GopherRepetition.from_config(c.repetition))
    return chain
