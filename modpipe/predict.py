"""Batch inference with a registered module: ``modpipe predict --model NAME@ALIAS --input FILE --output FILE``.

``predict(ref, inputs, output, tracking_uri, ...)``:

1. the module is loaded once in the driver through ``modpipe.registry.load`` (fetched into the verified cache,
   the one policy check; a refused module stops here, before any input is read);
2. the inputs (files or folders: JSONL, JSONL.gz/.zst, Parquet, .txt) are read through the same hardened readers as
   the corpus (``modpipe.curate.readers.read_records``: regular files only, byte/time/decompression caps, one bad
   record never stops the file); records stream into a Parquet file beside the output, rejects into
   ``<output>.quarantine.jsonl`` (file, line/row, reason);
3. Ray Data maps that file in batches through actors that each load the module the same way (from the cache,
   verified again) and predict;
4. the output Parquet holds ``id``, ``label``, ``probabilities`` (in ``labels`` order), ``labels``, ``model``,
   ``version``, ``module_digest`` and where each row came from (``source``, ``line``), in input order.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

log = logging.getLogger("modpipe.predict")

CHUNK_ROWS = 4096


class PredictError(RuntimeError):
    """Nothing to predict, or the module cannot be used."""


def _spool(inputs: list[str], spool: Path, quarantine: Path, text_field: str, id_field: str | None,
           max_record_bytes: int, limits) -> tuple[int, int]:
    """Records of ``inputs`` -> ``spool`` (Parquet: id, text, source, line); rejects -> ``quarantine`` (JSONL)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from modpipe.curate.readers import is_reject, read_records

    schema = pa.schema([("id", pa.string()), ("text", pa.string()), ("source", pa.string()), ("line", pa.int64())])
    n_ok = n_bad = 0
    rows: list[dict[str, Any]] = []
    with pq.ParquetWriter(spool, schema) as writer, open(quarantine, "w") as q:
        def flush() -> None:
            if rows:
                writer.write_table(pa.Table.from_pylist(rows, schema))
                rows.clear()
        for rec in read_records(inputs, text_field, id_field, max_record_bytes=max_record_bytes, limits=limits):
            if is_reject(rec):
                q.write(json.dumps({**rec, "step": "predict"}, default=str) + "\n")
                n_bad += 1
                continue
            rows.append({"id": str(rec["id"]), "text": rec["text"], "source": str(rec.get("source")),
                         "line": rec.get("line")})
            n_ok += 1
            if len(rows) >= CHUNK_ROWS:
                flush()
        flush()
    return n_ok, n_bad


class _Predictor:
    """A Ray Data actor: the module loaded (and checked) once, then batches of texts -> predictions."""

    def __init__(self, ref: str, tracking_uri: str, cache_dir: str, batch_size: int):
        from modpipe.registry import load

        self.loaded = load(ref, tracking_uri, cache_dir)
        self.batch_size = batch_size

    def __call__(self, batch: dict) -> dict:
        import numpy as np

        m = self.loaded
        probs = m.predict_proba(list(batch["text"]), self.batch_size)  # (B, K)
        n = len(batch["id"])
        # the label as text: a class; a multilabel set joined by "|"; a regression value in full (``repr``: the
        # float back exactly; the probabilities column holds the standardised score, not the value)
        labels = ["|".join(x) if isinstance(x, list) else x if isinstance(x, str) else repr(float(x))
                  for x in m.decide(probs)]
        return {"id": batch["id"], "label": np.array(labels, dtype=object),
                "probabilities": [row.astype("float32") for row in probs],
                "labels": [list(m.labels)] * n, "model": np.array([m.name] * n, dtype=object),
                "version": np.array([m.version] * n, dtype=object),
                "module_digest": np.array([m.module_digest] * n, dtype=object),
                "source": batch["source"], "line": batch["line"]}


def predict(ref: str, inputs: list[str], output: str | Path, tracking_uri: str, cache_dir: str | Path, *,
            text_field: str = "text", id_field: str | None = "id", batch_size: int = 64,
            max_record_bytes: int = 8_000_000, limits=None, concurrency: int = 1, ray_config=None) -> dict[str, Any]:
    """Predict every record of ``inputs`` with the registered module ``ref`` (see the module docstring)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import ray

    from modpipe.curate.guard import Limits
    from modpipe.raycluster import ensure_ray
    from modpipe.registry import load

    output = Path(output).resolve()
    output.parent.mkdir(parents=True, exist_ok=True)
    loaded = load(ref, tracking_uri, cache_dir)  # refuses before any input is read
    log.info("predict: %s v%s (%s, %d labels) passes the check", loaded.name, loaded.version,
             loaded.module_digest[:12], len(loaded.labels))
    spool = output.with_name(f".{output.name}.input-{os.getpid()}.parquet")
    quarantine = output.with_name(output.name + ".quarantine.jsonl")
    try:
        n_ok, n_bad = _spool([str(p) for p in inputs], spool, quarantine, text_field, id_field, max_record_bytes,
                             limits or Limits())
        log.info("predict: %d record(s) to predict, %d quarantined -> %s", n_ok, n_bad, quarantine)
        if not n_ok:
            raise PredictError(f"no readable record in {', '.join(map(str, inputs))} (quarantine: {quarantine})")
        ensure_ray(ray_config)
        ctx = ray.data.DataContext.get_current()
        ctx.execution_options.preserve_order = True
        ds = ray.data.read_parquet(str(spool)).map_batches(
            _Predictor, fn_constructor_kwargs={"ref": f"{loaded.name}/{loaded.version}", "tracking_uri": tracking_uri,
                                               "cache_dir": str(cache_dir), "batch_size": batch_size},
            batch_size=batch_size, batch_format="numpy", concurrency=concurrency, num_cpus=1)
        tmp = output.with_name(f".{output.name}.{os.getpid()}.tmp")
        writer = None
        n_out = 0
        try:
            for batch in ds.iter_batches(batch_format="pyarrow", batch_size=None):
                table = batch.cast(batch.schema.set(batch.schema.get_field_index("probabilities"),
                                                    pa.field("probabilities", pa.list_(pa.float32()))))
                if writer is None:
                    writer = pq.ParquetWriter(tmp, table.schema)
                writer.write_table(table)
                n_out += table.num_rows
        finally:
            if writer is not None:
                writer.close()
        os.replace(tmp, output)
    finally:
        spool.unlink(missing_ok=True)
    log.info("predict: %d prediction(s) -> %s", n_out, output)
    return {"model": loaded.name, "version": loaded.version, "module_digest": loaded.module_digest,
            "predicted": n_out, "quarantined": n_bad, "output": str(output), "quarantine": str(quarantine)}
