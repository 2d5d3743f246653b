"""Varied English prose for test corpora: distinct sentences, so repetition and quality filters keep it."""

SENTENCES = [
    "The pipeline reads plain text files and turns them into training data for a small language model.",
    "Every document is cleaned, deduplicated and filtered before it is tokenized.",
    "A reader opens each file once and never writes to it.",
    "Bad lines are moved to a quarantine folder together with the reason they were rejected.",
    "The tokenizer is trained on the documents that survive all of the filters.",
    "Packed sequences are written to Parquet shards with a manifest that lists their checksums.",
    "When a run stops half way, the next run picks up where the last one left off.",
    "Near duplicates are found with MinHash signatures and locality sensitive hashing.",
    "Language identification keeps the documents that are written in the expected languages.",
    "Personal data such as email addresses and phone numbers is replaced by typed placeholders.",
    "Held out examples of the downstream tasks are removed from the pretraining text.",
    "Counts of what each step removed are written to a stats file and shown in the run report.",
]

def prose(i: int, n: int = 7) -> str:
    """``n`` distinct sentences, a different selection and order for every ``i``."""
    import random

    return " ".join(random.Random(i).sample(SENTENCES, n))
