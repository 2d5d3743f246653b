"""Curate's per-document steps: exact + MinHash-LSH dedup (on Ray Data), Gopher quality / repetition filters,
language ID, PII scrubbing and n-gram decontamination, on crafted documents and real manual pages."""

from __future__ import annotations

import gzip
import random
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from modpipe.config import DecontamConfig, MinHashConfig, load_config
from modpipe.curate.decontaminate import from_tasks
from modpipe.curate.dedup import MinHasher, duplicate_ids, near_duplicate_ids
from modpipe.curate.filters import Drop, GopherQuality, GopherRepetition, quality_filters
from modpipe.curate.language import LanguageFilter, detect
from modpipe.curate.normalize import count_words, normalize, text_key
from modpipe.curate.pii import PiiScrub, pii_counts, scrub
from modpipe.curate.tasks import Task
from modpipe.curate.troff import strip_troff

MAN = Path("/usr/share/man")


def frame(texts: dict[str, str], **extra) -> pd.DataFrame:
    ids = list(texts)
    df = pd.DataFrame({"id": ids, "text": [texts[i] for i in ids], "source": "test", "line": -1, "reason": "",
                       "detail": ""})
    df["n_chars"] = [len(t) for t in df["text"]]
    df["n_words"] = [count_words(t) for t in df["text"]]
    df["key"] = [text_key(t) for t in df["text"]]
    for k, v in extra.items():
        df[k] = v
    return df


def reasons(df: pd.DataFrame) -> dict[str, str]:
    return dict(zip(df["id"], df["reason"]))


def man_page(rel: str) -> str:
    path = MAN / rel
    if not path.is_file():
        pytest.skip(f"{path} not installed")
    return normalize(strip_troff(gzip.open(path).read().decode("utf-8")))


VOCAB = [f"{a}{b}" for a in ("ka", "lo", "mi", "nu", "pe", "ra", "si", "tu", "ve", "zo", "ba", "de")
         for b in ("ran", "tel", "mos", "dik", "fun", "gal", "hep", "jor", "lin", "wex", "pry", "quo")]


def synthetic_doc(rng: random.Random, n_words: int = 300) -> str:
    """Prose-like text over a 144-word vocabulary: two such documents share few 5-grams (Jaccard ~0)."""
    words = [rng.choice(VOCAB) for _ in range(n_words)]
    return " ".join(w + ("." if i % 12 == 11 else "") for i, w in enumerate(words))


def edit(rng: random.Random, text: str, frac: float) -> str:
    words = text.split(" ")
    for j in rng.sample(range(len(words)), max(1, int(len(words) * frac))):
        words[j] = "edited" + str(j)
    return " ".join(words)


# --- dedup -----------------------------------------------------------------------------------------------------


def test_exact_dedup_keeps_smallest_id():
    df = frame({"b": "Same text here.", "a": "same  TEXT here.", "c": "Other text."})
    assert duplicate_ids(df[["id", "key"]]) == {"b": "same content as a"}


def test_minhash_on_ray_data_recall_no_false_merges_deterministic(ray_local):
    ray = ray_local
    rng = random.Random(7)
    docs = {f"doc{i:03d}": synthetic_doc(rng) for i in range(60)}
    planted = {}
    for i in range(0, 60, 3):  # 20 near-duplicates, 1% of the words edited (5-gram Jaccard ~0.9)
        planted[f"dup{i:03d}"] = f"doc{i:03d}"
        docs[f"dup{i:03d}"] = edit(rng, docs[f"doc{i:03d}"], 0.01)
    docs["zdup2"] = edit(rng, docs["doc000"], 0.005)  # a cluster of three: doc000, dup000, zdup2
    df = frame(docs)
    df.loc[df["id"] == "doc003", "reason"] = "too_short"  # rejected rows get no signature
    cfg = MinHashConfig()

    ds = ray.data.from_pandas([df.iloc[:40], df.iloc[40:]])
    sigs = ds.map_batches(MinHasher(cfg), batch_format="pandas", batch_size=16).to_pandas()
    assert len(sigs) == len(df) - 1 and len(sigs["sig"].iat[0]) == 4 * cfg.bands * cfg.rows
    near = near_duplicate_ids(sigs, cfg)

    expected = {d for d, src in planted.items() if src != "doc003"} | {"zdup2"}
    assert set(near) == expected  # every planted near-duplicate found, no distinct document merged
    assert all(near[d].startswith(f"near-duplicate of {planted[d]} ") for d in expected - {"zdup2"})
    assert near["zdup2"].startswith("near-duplicate of doc000 ")  # the cluster's smallest id is kept
    # same verdicts whatever the row order / batching (signatures depend only on the text and the seed)
    again = near_duplicate_ids(MinHasher(cfg)(df.sample(frac=1.0, random_state=1)), cfg)
    assert again == near
    # a stricter threshold keeps the 2%-edited copies apart from less similar ones, never merges more
    assert set(near_duplicate_ids(sigs, cfg.model_copy(update={"threshold": 0.95}))) <= set(near)
    flagged = Drop(near, reason_code="near_duplicate", name="dedup_minhash")(df)
    assert set(flagged.loc[flagged["reason"] == "near_duplicate", "id"]) == expected


# --- quality filters -------------------------------------------------------------------------------------------


SENTENCE = ("The tool reads the input files and writes a report with the results of each check to the standard "
            "output, one line per file. ")


def test_gopher_quality_reason_codes():
    filler = SENTENCE * 2  # 48 words
    docs = {
        "ok": filler,
        "short": "Too few words here to count as a document.",
        "long": SENTENCE * 7,
        "len_low": " ".join(["a b c d e f g h"] * 8) + " the and",
        "len_high": " ".join(["incomprehensibilities"] * 30) + " the and of",
        "hashes": filler + " #" * 40,
        "bullets": "\n".join(f"• item number {i} with the words of it" for i in range(10)),
        "ellipsis": "\n".join(f"line {i} of the text that trails off and ends in..." for i in range(6)),
        "alpha": filler + " " + " ".join(str(1000 + i) for i in range(80)),
        "stops": " ".join(f"network interface {w} configuration daemon restarts" for w in VOCAB[:8]),
    }
    g = GopherQuality(max_words=150)
    out = reasons(g(frame(docs, lang="en")))
    assert out == {"ok": "", "short": "gopher_short_doc", "long": "gopher_long_doc",
                   "len_low": "gopher_mean_word_len_low", "len_high": "gopher_mean_word_len_high",
                   "hashes": "gopher_symbol_ratio", "bullets": "gopher_bullet_lines",
                   "ellipsis": "gopher_ellipsis_lines", "alpha": "gopher_alpha_words", "stops": "gopher_stop_words"}
    assert set(out.values()) - {""} <= set(g.reasons)
    # the English stop-word rule leaves other languages alone
    assert reasons(g(frame({"stops": docs["stops"]}, lang="de"))) == {"stops": ""}
    # "-a, --all" option lines are not bullets
    options = "\n".join(f"-{c}, --option-{c} the value of {c} is used for the output" for c in "abcdefghij")
    assert reasons(g(frame({"opts": options}, lang="en"))) == {"opts": ""}


def test_gopher_repetition_reason_codes():
    rng = random.Random(3)
    distinct = [synthetic_doc(rng, 12) for _ in range(8)]
    big = synthetic_doc(rng, 200)
    docs = {
        "ok": "\n\n".join(distinct),
        "para": "\n\n".join(["The same short paragraph."] * 6 + distinct[:3]),
        "para_chars": "\n\n".join([big, big, big] + distinct[:6]),
        "lines": "\n".join(["the same line"] * 6 + distinct[:3]),
        "line_chars": "\n".join([big[:400]] * 3 + distinct[:5]),
        "top2": " ".join(f"foo bar {w}" for w in VOCAB[:60]),
        "dup5": " ".join([big] * 3),
    }
    r = GopherRepetition()
    out = reasons(r(frame(docs)))
    assert out == {"ok": "", "para": "dup_para_frac", "para_chars": "dup_para_char_frac", "lines": "dup_line_frac",
                   "line_chars": "dup_line_char_frac", "top2": "top_2_gram", "dup5": "dup_5_gram"}
    assert set(out.values()) - {""} <= set(r.reasons)


@pytest.mark.skipif(not (MAN / "man1").is_dir(), reason="no /usr/share/man on this machine")
def test_default_filters_keep_real_man_pages():
    pages = ["man1/ls.1.gz", "man1/grep.1.gz", "man5/passwd.5.gz", "man8/mount.8.gz", "de/man1/passwd.1.gz",
             "ja/man1/passwd.1.gz", "ru/man1/passwd.1.gz"]
    texts = {p: man_page(p) for p in pages if (MAN / p).is_file()}
    df = frame(texts)
    for step in quality_filters(load_config(None, []).curate):
        df = step(df)
    assert dict(zip(df["id"], df["reason"])) == {p: "" for p in texts}, df[["id", "detail"]]
    assert (df["lang"] != "").all()


# --- language ID -----------------------------------------------------------------------------------------------


@pytest.mark.skipif(not (MAN / "de").is_dir(), reason="no translated manual pages on this machine")
def test_langid_on_translated_man_pages():
    # passwd(1) is translated (not just copied) in these folders; folder name -> py3langid's code
    expected = {"de": "de", "fr": "fr", "ru": "ru", "ja": "ja", "it": "it", "uk": "uk", "tr": "tr", "hu": "hu",
                "zh_CN": "zh"}
    texts = {lang: man_page(f"{lang}/man1/passwd.1.gz") for lang in expected
             if (MAN / lang / "man1" / "passwd.1.gz").is_file()}
    if len(texts) < 3:
        pytest.skip("too few translated passwd(1) pages")
    assert {lang: detect(t)[0] for lang, t in texts.items()} == {lang: expected[lang] for lang in texts}
    df = frame(texts)
    kept = LanguageFilter()(df)  # the default: every language allowed
    assert (kept["reason"] == "").all() and list(kept["lang"]) == [expected[lang] for lang in texts]
    only_de = LanguageFilter(allowed=["de"])(df)
    assert reasons(only_de) == {lang: "" if lang == "de" else "lang_not_allowed" for lang in texts}
    assert LanguageFilter(min_confidence=1.01)(df)["reason"].eq("lang_low_confidence").all()


# --- PII -------------------------------------------------------------------------------------------------------


def test_pii_placeholders_and_counts():
    text = ("Report bugs to bug-tool@example.org or jane.doe+tag@mail.example.co.uk. Our server 8.8.8.8 and "
            "2606:4700:4700::1111 answer; 192.168.1.1, 127.0.0.1, ::1 and 2001:db8::1 are not personal. "
            "Call +1-202-555-0143 or (202) 555-0143. Version 2.6.32.1 (since dpkg 1.15.5.4, libfoo-1.2.3.4), "
            "dates like 2024-01-15, modes 0755 and sizes 100 200 3000 stay.")
    out, counts = scrub(text)
    assert counts == {"email": 2, "ip": 2, "phone": 2}
    assert out.count("<EMAIL>") == 2 and out.count("<IP>") == 2 and out.count("<PHONE>") == 2
    for kept in ("192.168.1.1", "127.0.0.1", "::1", "2001:db8::1", "2.6.32.1", "1.15.5.4", "libfoo-1.2.3.4",
                 "2024-01-15", "0755", "100 200 3000"):
        assert kept in out
    assert "@" not in out and "8.8.8.8" not in out and "555" not in out

    df = frame({"a": text, "b": "nothing to see here", "c": "dropped x@y.org"})
    df.loc[df["id"] == "c", "reason"] = "too_short"
    df = PiiScrub()(df)
    assert df.loc[df["id"] == "a", "text"].iat[0] == out
    assert df.loc[df["id"] == "a", "n_chars"].iat[0] == len(out)
    assert df.loc[df["id"] == "c", "text"].iat[0] == "dropped x@y.org"  # rejected rows are left as they are
    assert pii_counts(df) == {"email": 2, "ip": 2, "phone": 2}
    off = PiiScrub.from_config(load_config(None, ["curate.pii.enabled=false"]).curate.pii)(frame({"a": text}))
    assert off["text"].iat[0] == text and pii_counts(off) == {"email": 0, "ip": 0, "phone": 0}


# --- decontamination -------------------------------------------------------------------------------------------


def test_ngram_decontamination_13_not_12():
    rng = random.Random(11)
    example = synthetic_doc(rng, 60)
    words = example.split(" ")
    boiler = "see the manual of the tool for the list of options and the exit status it returns"
    task = Task(name="t", kind="man_section", labels=["1"], dropped={}, max_chars=2000, splits={
        "train": [{"id": "tr1", "text": f"{synthetic_doc(rng, 30)} {boiler}", "label": "1", "key": "k1"}],
        "val": [],
        "test": [{"id": "ex1", "text": f"{example} {boiler}", "label": "1", "key": text_key(example + " " + boiler)}],
    })
    decon = from_tasks([task], ["val", "test"])  # defaults: 13-grams, example-frequency cap 1
    other = synthetic_doc(rng, 80)
    docs = {
        "has13": f"{other} {' '.join(words[20:33])} {other}",
        "has12": f"{other} {' '.join(words[20:32])} {other}",
        "boiler": f"{other} {boiler} {other}",  # shared with a train example: page boilerplate, not the example
        "same_id": other,
        "clean": other + " more",
    }
    df = frame(docs)
    df.loc[df["id"] == "same_id", "id"] = "ex1"
    out = decon(df)
    got = dict(zip(out["id"], zip(out["reason"], out["detail"])))
    assert got["has13"][0] == "contaminated" and "13-gram" in got["has13"][1] and "t/test/ex1" in got["has13"][1]
    assert got["has12"] == ("", "") and got["boiler"] == ("", "") and got["clean"] == ("", "")
    assert got["ex1"] == ("contaminated", "id in t/test/ex1")  # the exact id/text matches stay
    assert decon.reasons == ("contaminated",)
    # n configurable; n-grams off leaves only the exact matches
    assert reasons(from_tasks([task], ["test"], DecontamConfig(n=12))(frame({"has12": docs["has12"]}))) == {
        "has12": "contaminated"}
    assert reasons(from_tasks([task], ["test"], DecontamConfig(ngram=False))(frame(docs))) == {
        k: "" for k in docs}


def test_chain_keeps_columns_for_empty_and_full_batches():
    cfg = load_config(None, []).curate
    texts = {"a": " ".join(SENTENCE for _ in range(4)) + " Mail admin@example.org."}
    chain = [Drop({}), *quality_filters(cfg), from_tasks([], ["val", "test"]), PiiScrub.from_config(cfg.pii)]
    for df in (frame(texts), frame(texts).assign(reason="too_short")):
        for step in chain:
            df = step(df)
        assert {"lang", "lang_score", "pii_email", "pii_ip", "pii_phone"} <= set(df.columns)
    assert np.array_equal(df["pii_email"].to_numpy(), [0])


def test_step_base_bookkeeping():
    """``Step.run``: rows in/out and removed per reason into mergeable stats, the step's name on the rows it
    rejected; rows rejected earlier are not seen again."""
    from modpipe.curate.base import Stats
    from modpipe.curate.filters import Length

    df = frame({"a": "x" * 300, "b": "short", "c": "y" * 50, "d": "z" * 400}).assign(step="")
    df.loc[df["id"] == "c", ["reason", "step"]] = ["duplicate", "dedup_exact"]
    stats = Stats()
    out = Length(min_chars=100, max_chars=350).run(df, stats)
    assert reasons(out) == {"a": "", "b": "too_short", "c": "duplicate", "d": "too_long"}
    assert dict(zip(out["id"], out["step"])) == {"a": "", "b": "length", "c": "dedup_exact", "d": "length"}
    assert stats.as_dict() == {"length": {"in": 3, "out": 1, "removed_by_reason": {"too_long": 1, "too_short": 1}}}
    merged = Stats(stats.as_dict()).merge(stats.as_dict()).as_dict()
    assert merged["length"] == {"in": 6, "out": 2, "removed_by_reason": {"too_long": 2, "too_short": 2}}


def _imports(path: Path) -> set[str]:
    """Every ``modpipe`` module a file imports, at the top or inside a function (``from pkg import module``: the
    module; ``from pkg import name``: the package)."""
    import ast
    import importlib.util

    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("modpipe"):
            for a in node.names:
                sub = f"{node.module}.{a.name}"
                found.add(sub if importlib.util.find_spec(node.module).submodule_search_locations is not None
                          and importlib.util.find_spec(sub) is not None else node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("modpipe")}
    return found


def test_config_imports_no_stage_code_and_curate_has_no_cycles():
    import modpipe

    root = Path(modpipe.__file__).parent
    # One named exception: with pretrain.init_from the checkpoint's config.json is the model section, checked by a
    # validator when the config loads (the import sits inside that validator, never at module import).
    at_load = {"config.py": {"modpipe.pretrain.init_from"}}
    for cfg in root.glob("config*.py"):  # config modules read only config modules (and paths)
        stage = [m for m in _imports(cfg) if not m.startswith(("modpipe.config", "modpipe.paths"))
                 and m not in at_load.get(cfg.name, set())]
        assert not stage, (cfg.name, stage)
    modules = {f"modpipe.curate.{p.stem}" if p.stem != "__init__" else "modpipe.curate": p
               for p in (root / "curate").glob("*.py")}
    graph = {m: {i for i in _imports(p) if i in modules and i != m} for m, p in modules.items()}

    def reaches(start: str, goal: str, seen: set) -> bool:
        return any(n == goal or (n not in seen and not seen.add(n) and reaches(n, goal, seen)) for n in graph[start])

    cycles = sorted(m for m in graph if m != "modpipe.curate" and reaches(m, m, set()))
    assert not cycles, cycles
