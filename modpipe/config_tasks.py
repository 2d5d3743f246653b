"""The downstream tasks: where each task's labelled examples come from (``tasks.specs``) and how they are split.

A task is built-in (``source``: ``man_section``, ``man_language``, ``py_package``: labels read off the harvested
pages / docstrings) or the user's own (``source: files``: a JSONL / JSONL.gz / JSONL.zst / Parquet / CSV file or
folder, local or an fsspec URL, read through the same hardened readers as the corpus).  Both go through the same
mechanism (``curate.tasks``): dedup by text, hash splits unless the file gives them, decontamination of the
pretraining corpus against val/test, contracts, one module per task.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import field_validator, model_validator

from modpipe.config_base import Name, NonNegativeInt, PositiveInt, _Section

BUILTIN_SOURCES = ("man_section", "man_language", "py_package")
_SLICE_FIELD = re.compile(r"[A-Za-z0-9_.][A-Za-z0-9_. -]{0,63}")
SPLIT_NAMES = ("train", "val", "test")


class TaskSpec(_Section):
    name: Name
    """The task's folder under curate's ``tasks/``, its module dirs and its registered model's name."""
    source: Literal["files", "man_section", "man_language", "py_package"]
    """files: the user's labelled examples at ``path``; man_section: English page -> its section; man_language:
    translated page -> its language folder; py_package: stdlib docstring -> its top-level package (always from the
    stdlib docstrings, a second source of text beside the manual pages).  ``kind`` is accepted as its old name."""
    problem: Literal["classification", "multilabel", "regression"] = "classification"
    """What is predicted (``evaluate.problems``): classification, one label per example; multilabel, a set of
    labels per example (the label column holds a list, or a string split on ``label_separator``); regression, a
    number per example.  Built-in sources are classification tasks."""
    path: str | None = None
    """``source: files``: a file or folder (``.jsonl``, ``.jsonl.gz``, ``.jsonl.zst``, ``.parquet``, ``.csv``),
    local or an fsspec URL.  Relative local paths are relative to the working directory."""
    text_field: str = "text"
    label_field: str = "label"
    """The label column: classification, a string or an integer (stored as its text); multilabel, a list of
    them (empty: no label applies); regression, a finite number (or its text, as a CSV holds it)."""
    label_separator: str | None = None
    """Multilabel: split a label column that holds one string on this (e.g. ``"|"`` for a CSV); None: the
    column must hold a list."""
    id_field: str | None = "id"
    """Example ids (a string or an integer); absent: a stable id from the file's name and line."""
    split_field: str | None = None
    """A column giving each example's split (``train`` / ``val`` / ``test``); None: split by text hash."""
    slice_fields: list[str] = []
    """``source: files``: columns whose values slice the test metrics (``evaluate.slices``): metrics per value,
    the largest gap between values (bounded by ``publish.max_slice_gap``).  Every task also has the ``length``
    slice."""
    max_chars: PositiveInt = 2000
    """Each example is truncated to this many characters before tokenization."""

    @model_validator(mode="before")
    @classmethod
    def _kind_is_source(cls, data: Any) -> Any:
        if isinstance(data, dict) and "kind" in data:
            data = dict(data)
            kind = data.pop("kind")
            if "source" in data and data["source"] != kind:
                raise ValueError(f"kind={kind!r} and source={data['source']!r} disagree; give source only")
            data["source"] = kind
        return data

    @model_validator(mode="after")
    def _path_for_files(self) -> "TaskSpec":
        if self.source == "files" and not self.path:
            raise ValueError(f"task {self.name!r}: source 'files' needs a path")
        if self.source != "files" and self.path:
            raise ValueError(f"task {self.name!r}: path is only for source 'files' ({self.source} is built in)")
        for field in ("text_field", "label_field"):
            if not getattr(self, field).strip():
                raise ValueError(f"task {self.name!r}: {field} is blank")
        if self.source != "files" and self.problem != "classification":
            raise ValueError(f"task {self.name!r}: the built-in source {self.source} is a classification task")
        if self.label_separator is not None and (self.problem != "multilabel" or not self.label_separator):
            raise ValueError(f"task {self.name!r}: label_separator is for multilabel tasks and must not be empty")
        if self.slice_fields and self.source != "files":
            raise ValueError(f"task {self.name!r}: slice_fields are columns of a task file (source 'files')")
        bad = [f for f in self.slice_fields if not _SLICE_FIELD.fullmatch(f) or f in ("id", "length")
               or self.slice_fields.count(f) > 1]
        if bad:
            raise ValueError(f"task {self.name!r}: slice_fields {bad}: repeated, a reserved name ('id', 'length'), "
                             f"or not letters, digits, '_', '-', '.', ' ' (the field names a registry metric)")
        return self

    @property
    def kind(self) -> str:
        """The old name of ``source``."""
        return self.source


class TasksConfig(_Section):
    specs: list[TaskSpec] = [
        TaskSpec(name="man_section", source="man_section"),
        TaskSpec(name="man_language", source="man_language"),
        TaskSpec(name="py_package", source="py_package"),
    ]
    val_frac: float = 0.1
    test_frac: float = 0.2
    min_examples_per_label: PositiveInt = 20
    """Labels with fewer (deduplicated) examples are dropped (man_language uses corpus.min_docs_per_language)."""
    min_chars: NonNegativeInt = 100
    """Examples shorter than this after normalisation are dropped."""

    @field_validator("test_frac", "val_frac")
    @classmethod
    def _frac(cls, v: float) -> float:
        if not 0.0 < v < 0.5:
            raise ValueError("must be in (0, 0.5)")
        return v

    @field_validator("specs")
    @classmethod
    def _unique(cls, v: list[TaskSpec]) -> list[TaskSpec]:
        names = [s.name for s in v]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"task names must be unique: {twice} appear more than once")
        return v
