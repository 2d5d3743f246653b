"""Slice metrics (``evaluate.slices``) equal a hand computation on a small fixed set (the gate's bound on a real
module: tests/unit/test_registry.py)."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from modpipe.evaluate.slices import SLICES_FILE, length_bucket, slice_metrics


def test_slice_metrics_equal_a_hand_computation(tmp_path):
    ids = [f"e{i}" for i in range(24)]
    region = ["eu"] * 12 + ["us"] * 10 + ["xx"] * 2  # xx: too few rows to decide a gap
    pq.write_table(pa.table({"id": ids, "region": region}), tmp_path / SLICES_FILE)
    y = [0, 1] * 12
    # eu: 12 rows, all right -> accuracy 1, macro-F1 1
    # us: 10 rows (labels 0,1,0,1,...): predict all 0 -> accuracy 0.5; F1(0) = 2*5/(2*5+5) = 2/3, F1(1) = 0
    # xx: 2 rows, both wrong
    p = y[:12] + [0] * 10 + [1, 0]
    out = slice_metrics(tmp_path, ids, y, p)
    eu, us, xx = (out["test_slices"]["region"][k] for k in ("eu", "us", "xx"))
    assert (eu["n"], eu["accuracy"], eu["macro_f1"]) == (12, 1.0, 1.0)
    assert (us["n"], us["accuracy"]) == (10, 0.5) and us["macro_f1"] == pytest.approx((2 / 3 + 0) / 2)
    assert (xx["n"], xx["accuracy"]) == (2, 0.0)
    assert out["test_slice_gap.region"] == pytest.approx(1 - 1 / 3)  # eu vs us; xx is below 10 rows
    assert out["test_max_slice_gap"] == pytest.approx(2 / 3)
    assert slice_metrics(tmp_path / "none", ids, y, p) == {"test_slices": {}, "test_max_slice_gap": None}


def test_length_buckets():
    assert [length_bucket(n) for n in (0, 499, 500, 1999, 2000, 7999, 8000)] == [
        "<500 chars", "<500 chars", "500-2k chars", "500-2k chars", "2k-8k chars", "2k-8k chars", ">=8k chars"]
