"""Pretraining throughput on one GPU: modpipe's pretrain stage against a minimal compiled GPT, in one run.

    python benchmarks/pretrain_gpu.py [--sizes 125m 350m] [--steps 40] [--zero-stage 2] [--no-fused-adam]
        [--activation-checkpointing] [--set pretrain.log_every=5 ...]

For each size, on the same GPU, one after the other (the reference in its own process, so its CUDA memory is gone
before modpipe's Ray Train worker starts):

- **reference**: ``benchmarks/reference_gpt.py`` (a copy of the project's GPU reference: nanoGPT-style GPT-2, bf16
  autocast, SDPA, ``torch.compile``, fused AdamW): 124M (768 x 12 layers, 12 heads) and 354M (1024 x 24, 16 heads),
  vocabulary 50304, sequence 1024; timed over ``--steps`` after ``--warm`` warm-up steps (compilation included there).
- **modpipe**: ``modpipe.pretrain.train`` (the pretrain step without its contract gate): a Ray Train TorchTrainer
  with one GPU worker running the DeepSpeed loop (bf16, ``--zero-stage``, torch's fused AdamW unless
  ``--no-fused-adam``, SDPA attention), on a Llama backbone of the same class: 768 x 12 with MLP 2048 (124M) and
  1024 x 24 with MLP 2816 (360M), same vocabulary and sequence, same sequences per step (``--batch``). Its data is
  a synthetic curate output (random token rows in Parquet shards + a word-level tokenizer of the same vocabulary):
  throughput does not depend on the text. tokens/s is the loop's steady-state figure (the first step, checkpoints
  and the export excluded); ``--steps`` steps.

MFU for both with one formula: 6 N + 12 L d T FLOPs per token (N parameters with tied embeddings counted once,
L layers, d width, T sequence; PaLM appendix B, as nanoGPT and ``modpipe.models.backbone.flops_per_token``) against
``--peak-tflops`` (989: H100 SXM dense bf16; also H200). Prints a table and ``ratio <modpipe/reference>`` per size;
writes ``benchmarks/results/pretrain_gpu-<UTC time>.json``. Needs a CUDA GPU; refuses to start without one.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

log = logging.getLogger("bench.pretrain_gpu")

VOCAB, SEQ = 50304, 1024  # the reference's GPT-2 vocabulary (padded to a multiple of 64) and sequence
# name -> (reference GPT (d, L, heads), modpipe Llama (hidden, layers, heads, MLP width))
SIZES = {
    "125m": ((768, 12, 12), (768, 12, 12, 2048)),
    "350m": ((1024, 24, 16), (1024, 24, 16, 2816)),
}
DEFAULT_BATCH = {"125m": 32, "350m": 16}


def flops_per_token(n_params: int, layers: int, width: int, seq: int) -> float:
    """Training FLOPs per token: 6N for the matmuls (forward + backward) + 12 L d T for the attention scores."""
    return 6.0 * n_params + 12.0 * layers * width * seq


def mfu(tokens_per_s: float, n_params: int, layers: int, width: int, seq: int, peak_tflops: float) -> float:
    return flops_per_token(n_params, layers, width, seq) * tokens_per_s / (peak_tflops * 1e12)


# ---------------------------------------------------------------- data: a synthetic curate output


def synthetic_curate(root: Path, vocab: int, seq_len: int, rows: int, rows_per_shard: int = 4096,
                     seed: int = 0) -> dict:
    """What ``modpipe.pretrain.train`` reads from curate: ``manifest.json`` (shards with sha256, tokenizer), Parquet
    shards of ``input_ids`` rows of exactly ``seq_len`` random ids in [3, vocab), and a word-level tokenizer with
    ``<pad>, <unk>, <eos>`` = 0, 1, 2 and ``vocab`` entries in all."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    from tokenizers import Tokenizer, models

    def sha(path: Path) -> str:
        return hashlib.sha256(path.read_bytes()).hexdigest()

    (root / "tokenizer").mkdir(parents=True, exist_ok=True)
    (root / "shards").mkdir(exist_ok=True)
    words = {"<pad>": 0, "<unk>": 1, "<eos>": 2, **{f"t{i}": i for i in range(3, vocab)}}
    tok_path = root / "tokenizer" / "tokenizer.json"
    Tokenizer(models.WordLevel(words, unk_token="<unk>")).save(str(tok_path))
    rng = np.random.default_rng(seed)
    shards = []
    for i, start in enumerate(range(0, rows, rows_per_shard)):
        n = min(rows_per_shard, rows - start)
        ids = rng.integers(3, vocab, size=(n, seq_len), dtype=np.int32)  # (n, T)
        path = root / "shards" / f"shard-{i:05d}.parquet"
        arr = pa.ListArray.from_arrays(pa.array(np.arange(0, n * seq_len + 1, seq_len, dtype=np.int32)),
                                       pa.array(ids.reshape(-1)))
        pq.write_table(pa.table({"input_ids": arr}), path)
        shards.append({"path": f"shards/{path.name}", "rows": n, "tokens": n * seq_len, "sha256": sha(path)})
    manifest = {"seq_len": seq_len, "vocab_size": vocab, "tokenizer": "tokenizer/tokenizer.json",
                "tokenizer_sha256": sha(tok_path), "shards": shards, "total_rows": rows,
                "total_tokens": rows * seq_len, "synthetic": True}
    (root / "manifest.json").write_text(json.dumps(manifest))
    return {"curate_dir": str(root), "manifest": str(root / "manifest.json"), "tokenizer": str(tok_path)}


# ---------------------------------------------------------------- arms


def reference_arm(size: str, batch: int, steps: int, warm: int, peak: float) -> dict:
    """``reference_gpt.run_plain`` on a GPT of ``size`` in a child process; its JSON line, plus our MFU."""
    d, layers, heads = SIZES[size][0]
    code = ("import torch, reference_gpt as r\n"
            "torch.backends.cuda.matmul.allow_tf32 = True\n"
            f"g = r.GPT(v={VOCAB}, d={d}, L={layers}, h={heads})\n"
            f"r.run_plain('gpt_{size}_compile', g, {VOCAB}, g.L, g.d)\n")
    env = {**os.environ, "B": str(batch), "STEPS": str(steps), "WARM": str(warm), "PEAK_TFLOPS": str(peak)}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code], cwd=BENCH, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"reference {size} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    line = next(x for x in reversed(proc.stdout.splitlines()) if x.startswith("{") and '"variant"' in x)
    res = json.loads(line)
    n = _gpt_params(d, layers)  # the reference prints millions to one decimal: counted exactly here
    return {
        "arm": "reference", "size": size, "variant": res["variant"], "params": n, "layers": layers, "width": d,
        "batch": batch, "seq": SEQ, "tokens_per_s": float(res["tokens_per_s"]), "step_ms": res["step_ms"],
        "mfu": round(mfu(res["tokens_per_s"], n, layers, d, SEQ, peak), 4), "mfu_reported": res["mfu"],
        "max_mem_gib": res["max_mem_GiB"], "loss": res["loss"], "wall_s": round(time.perf_counter() - t0, 1),
    }


def _gpt_params(d: int, layers: int) -> int:
    """reference_gpt.GPT's parameter count (tied head): wte + wpe + blocks (LN, qkv, proj, fc, out) + final LN."""
    block = 2 * 2 * d + (d * 3 * d + 3 * d) + (d * d + d) + (d * 4 * d + 4 * d) + (4 * d * d + d)
    return VOCAB * d + SEQ * d + layers * block + 2 * d


def modpipe_arm(size: str, batch: int, steps: int, a, curate_out: dict, work: Path) -> dict:
    """``modpipe.pretrain.train`` on one GPU worker; tokens/s and the rest from the stage's metrics.json."""
    from modpipe import pretrain
    from modpipe.config import load_config

    hidden, layers, heads, mlp = SIZES[size][1]
    cfg = load_config(None, [
        f"run_dir={work / 'run'}", f"model.hidden_size={hidden}", f"model.num_layers={layers}",
        f"model.num_heads={heads}", f"model.intermediate_size={mlp}", f"model.max_position_embeddings={SEQ}",
        f"pretrain.steps={steps}", f"pretrain.micro_batch_size={batch}", "pretrain.gradient_accumulation_steps=1",
        "pretrain.num_workers=1", "pretrain.use_gpu=true", f"pretrain.zero_stage={a.zero_stage}",
        f"pretrain.deepspeed_config=infra/deepspeed/zero{a.zero_stage}.json",
        f"pretrain.fused_adam={str(not a.no_fused_adam).lower()}",
        f"pretrain.activation_checkpointing={str(a.activation_checkpointing).lower()}",
        "pretrain.attn_implementation=sdpa", "pretrain.lr=3e-4", f"pretrain.warmup_steps={max(1, steps // 10)}",
        f"pretrain.checkpoint_every={steps}", "pretrain.log_every=10", f"pretrain.peak_tflops={a.peak_tflops}",
        *a.sets,
    ])
    t0 = time.perf_counter()
    out = pretrain.train(cfg, curate_out, work / "backbone", work / "work")
    wall = time.perf_counter() - t0
    m = json.loads(Path(out["metrics"]).read_text())
    tps = float(m["tokens_per_s"])
    return {
        "arm": "modpipe", "size": size, "variant": f"modpipe_llama_{size}_zero{m['zero_stage']}",
        "params": m["params"], "layers": layers, "width": hidden, "batch": m["micro_batch_size"], "seq": m["seq_len"],
        "tokens_per_s": tps, "step_ms": m["ms_per_step"],
        "mfu": round(mfu(tps, m["params"], layers, hidden, m["seq_len"], a.peak_tflops), 4),
        "mfu_reported": m["mfu"], "bf16": m["bf16"], "zero_stage": m["zero_stage"], "fused_adam": m["fused_adam"],
        "activation_checkpointing": m["activation_checkpointing"], "attn_implementation": m["attn_implementation"],
        "final_loss": m["final_loss"], "steps": m["steps"], "wall_s": round(wall, 1),
    }


def _gpu_name() -> str:
    proc = subprocess.run([sys.executable, "-c", "import torch; print(torch.cuda.get_device_name())"],
                          capture_output=True, text=True)
    return proc.stdout.strip() or "unknown"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", nargs="+", choices=sorted(SIZES), default=["125m", "350m"])
    p.add_argument("--batch", type=int, nargs="+", default=None,
                   help="sequences per step, one per size (default: 32 for 125m, 16 for 350m)")
    p.add_argument("--steps", type=int, default=40, help="timed steps of each arm")
    p.add_argument("--warm", type=int, default=8, help="reference warm-up steps (torch.compile happens here)")
    p.add_argument("--zero-stage", type=int, choices=[0, 1, 2, 3], default=2)
    p.add_argument("--no-fused-adam", action="store_true", help="modpipe: torch AdamW with foreach, not fused")
    p.add_argument("--activation-checkpointing", action="store_true", help="modpipe: recompute activations")
    p.add_argument("--peak-tflops", type=float, default=989.0, help="per-GPU dense bf16 peak for MFU")
    p.add_argument("--set", dest="sets", action="append", default=[], help="extra modpipe config override")
    p.add_argument("--work", default=None, help="work dir (default: a temp dir, removed afterwards)")
    p.add_argument("--out", default=str(BENCH / "results"), help="folder of the results JSON")
    a = p.parse_args()
    if a.batch is not None and len(a.batch) != len(a.sizes):
        p.error(f"--batch needs one value per size ({len(a.sizes)})")
    if a.steps < 3:
        p.error("--steps must be >= 3 (modpipe's first step is warm-up)")

    import torch

    if not torch.cuda.is_available():
        sys.exit(f"pretrain_gpu.py needs a CUDA GPU: torch {torch.__version__} sees none "
                 f"(a +cpu build, or no driver). Nothing was run.")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    batches = dict(zip(a.sizes, a.batch or [DEFAULT_BATCH[s] for s in a.sizes]))
    work = Path(a.work or tempfile.mkdtemp(prefix="bench-pretrain-gpu-"))
    curate_out = synthetic_curate(work / "curate", VOCAB, SEQ, rows=max(b * (a.steps + 1) for b in batches.values()))

    rows = []
    for size in a.sizes:
        b = batches[size]
        log.info("%s: reference (batch %d x %d)", size, b, SEQ)
        ref = reference_arm(size, b, a.steps, a.warm, a.peak_tflops)
        log.info("%s: reference %s", size, ref)
        log.info("%s: modpipe pretrain stage (batch %d x %d, ZeRO-%d)", size, b, SEQ, a.zero_stage)
        ours = modpipe_arm(size, b, a.steps, a, curate_out, work / f"modpipe-{size}")
        log.info("%s: modpipe %s", size, ours)
        shutil.rmtree(work / f"modpipe-{size}", ignore_errors=True)  # checkpoints of a 350M model are GBs
        rows += [ref, ours]

    summary = {}
    for size in a.sizes:
        ref, ours = (r for r in rows if r["size"] == size)
        summary[size] = {"tokens_per_s_ratio": round(ours["tokens_per_s"] / ref["tokens_per_s"], 3),
                         "mfu_ratio": round(ours["mfu"] / ref["mfu"], 3)}
    record = {"when": datetime.now(timezone.utc).isoformat(), "host": platform.node(), "gpu": _gpu_name(),
              "torch": torch.__version__, "args": vars(a), "flops_per_token": "6N + 12 L d T",
              "peak_tflops": a.peak_tflops, "rows": rows, "summary": summary}
    out = Path(a.out) / f"pretrain_gpu-{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2))
    if a.work is None:
        shutil.rmtree(work, ignore_errors=True)

    print(f"\n{record['gpu']}, torch {torch.__version__}, MFU = (6N + 12 L d T) x tokens/s / {a.peak_tflops:g} TFLOP/s")
    print("| size | arm | params | batch x seq | tokens/s | MFU | step ms |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['size']} | {r['variant']} | {r['params'] / 1e6:.1f}M | {r['batch']} x {r['seq']} | "
              f"{r['tokens_per_s']:,.0f} | {100 * r['mfu']:.1f}% | {r['step_ms']} |")
    for size, s in summary.items():
        print(f"{size}: ratio {s['tokens_per_s_ratio']} (tokens/s, modpipe / reference), MFU ratio {s['mfu_ratio']}")
    print(f"results: {out}")


if __name__ == "__main__":
    main()
