"""What modpipe's pretrain stage costs on CPU: plain torch against the stage, same model, global batch and cores.

    python benchmarks/pretrain_overhead.py [--steps 200] [--cpus 2] [--order plain-first] [--set pretrain.x=y ...]

On a machine with more cores than ``--cpus``, run it under ``taskset -c 0,1`` (for 2) so both arms get the same
cores. Both arms train the default backbone (``model`` section of the default config: the 0.95M-parameter Llama)
on the same synthetic curate output (random ids, vocabulary ``curate.vocab_size``, rows of ``curate.seq_len``
tokens; throughput does not depend on the text), global batch 32 x 128, fp32, AdamW (betas 0.9/0.95, weight
decay on >= 2-D weights only), gradient clipping at 1.0, for ``--steps`` optimizer steps each:

- **plain**: one process, ``torch.set_num_threads(--cpus)``, the loop of ``modpipe/pretrain/loop.py`` without
  DeepSpeed or Ray: ``model(input_ids, labels).loss``, ``backward``, clip, ``AdamW.step`` (no LR schedule: its cost
  is nil), batches of 32 from ``modpipe.pretrain.data.BatchStream``;
- **modpipe**: ``modpipe.pretrain.train`` (the pretrain step without its contract gate) with the default pretrain
  section (2 Ray Train workers of 1 CPU each on a local Ray of ``--cpus`` CPUs, DeepSpeed ZeRO-2 over gloo,
  micro-batch 16 per worker), checkpoints every ``pretrain.checkpoint_every`` steps as in a real run.

tokens/s of each is the steady state: the first step is excluded, and modpipe's checkpoints too (the loop's own
figure); the stage's end-to-end rate (Ray start, DeepSpeed init, checkpoints, export included) is printed beside
it. Prints ``ratio <modpipe / plain>`` (goal: >= 0.9, a wrapper costing at most ~10%) and writes
``benchmarks/results/pretrain_overhead-<UTC time>.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(BENCH))
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

log = logging.getLogger("bench.pretrain_overhead")


def plain_arm(cfg, curate_out: dict, steps: int, threads: int) -> dict:
    """The pretrain loop's work in one process: no Ray, no DeepSpeed."""
    import torch

    from modpipe.models.backbone import PAD_ID, build_causal_lm, count_params, optim_groups
    from modpipe.pretrain.data import BatchStream, read_rank_rows
    from modpipe.pretrain.ds_config import load_ds_config

    torch.set_num_threads(threads)
    p = cfg.pretrain
    manifest = json.loads(Path(curate_out["manifest"]).read_text())
    root = Path(curate_out["manifest"]).parent
    shards = [str(root / s["path"]) for s in manifest["shards"]]
    seq, vocab = manifest["seq_len"], manifest["vocab_size"]
    rows, _ = read_rank_rows(shards, seq, 0, 1, vocab)  # (N, T): every row, one "rank"
    batch = p.micro_batch_size * p.gradient_accumulation_steps * p.num_workers  # the stage's global batch
    stream = BatchStream(rows, batch, cfg.seed, 0)
    opt_params = load_ds_config(p.deepspeed_config)["optimizer"]["params"]
    clip = load_ds_config(p.deepspeed_config).get("gradient_clipping", 0.0)

    model = build_causal_lm(cfg.model, vocab, seed=cfg.seed)
    model.config.use_cache = False
    model.set_attn_implementation(p.attn_implementation)
    model.train()
    opt = torch.optim.AdamW(optim_groups(model, p.weight_decay), lr=p.lr, betas=tuple(opt_params["betas"]),
                            eps=opt_params["eps"])
    batches = stream.iter_from(0)
    losses, t_warm, t0 = [], None, time.perf_counter()
    for step in range(1, steps + 1):
        _, b = next(batches)
        x = torch.from_numpy(b)  # (B, T) token ids
        labels = x.masked_fill(x == PAD_ID, -100)
        loss = model(input_ids=x, labels=labels).loss
        loss.backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if step % p.log_every == 0 or step == steps:
            losses.append(round(loss.item(), 5))
        if step == 1:
            t_warm = time.perf_counter()  # the first step pays for allocations: time from here, as the stage does
    end = time.perf_counter()
    tokens_per_step = batch * seq
    return {"arm": "plain", "threads": threads, "params": count_params(model), "batch": batch, "seq": seq,
            "steps": steps, "tokens_per_s": round(tokens_per_step * (steps - 1) / (end - t_warm), 1),
            "ms_per_step": round(1000 * (end - t_warm) / (steps - 1), 2), "wall_s": round(end - t0, 1),
            "end_to_end_tokens_per_s": round(tokens_per_step * steps / (end - t0), 1),
            "final_loss": losses[-1], "loss_curve": losses}


def modpipe_arm(cfg, curate_out: dict, work: Path) -> dict:
    """``modpipe.pretrain.train``: Ray Train + DeepSpeed, as the pretrain step runs it."""
    from modpipe import pretrain

    t0 = time.perf_counter()
    out = pretrain.train(cfg, curate_out, work / "backbone", work / "work")
    wall = time.perf_counter() - t0
    m = json.loads(Path(out["metrics"]).read_text())
    return {"arm": "modpipe", "workers": m["world_size"], "zero_stage": m["zero_stage"], "params": m["params"],
            "batch": m["tokens_per_step"] // m["seq_len"], "seq": m["seq_len"], "steps": m["steps"],
            "tokens_per_s": m["tokens_per_s"], "ms_per_step": m["ms_per_step"], "wall_s": round(wall, 1),
            "end_to_end_tokens_per_s": round(m["tokens_seen"] / wall, 1), "final_loss": m["final_loss"],
            "loss_curve": [pt["loss"] for pt in m["loss_curve"]]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=200, help="optimizer steps of each arm")
    p.add_argument("--cpus", type=int, default=2, help="plain: torch threads; modpipe: the local Ray's CPUs")
    p.add_argument("--order", choices=["plain-first", "modpipe-first"], default="plain-first")
    p.add_argument("--set", dest="sets", action="append", default=[], help="config override (both arms)")
    p.add_argument("--work", default=None, help="work dir (default: a temp dir, removed afterwards)")
    p.add_argument("--out", default=str(BENCH / "results"), help="folder of the results JSON")
    a = p.parse_args()
    if a.steps < 3:
        p.error("--steps must be >= 3 (the first step is warm-up)")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    from modpipe.config import load_config
    from pretrain_gpu import synthetic_curate

    work = Path(a.work or tempfile.mkdtemp(prefix="bench-pretrain-overhead-"))
    cfg = load_config(None, [f"run_dir={work / 'run'}", f"pretrain.steps={a.steps}", f"ray.num_cpus={a.cpus}",
                             *a.sets])
    pc = cfg.pretrain
    if pc.use_gpu:
        p.error("this benchmark is CPU only (pretrain.use_gpu=false)")
    batch = pc.micro_batch_size * pc.gradient_accumulation_steps * pc.num_workers
    # Enough rows that neither arm repeats an epoch (curate's default run holds ~30k rows of 128).
    curate_out = synthetic_curate(work / "curate", cfg.curate.vocab_size, cfg.curate.seq_len,
                                  rows=batch * (a.steps + 1), seed=cfg.seed)
    log.info("global batch %d x %d, %d steps, %d CPUs, %s", batch, cfg.curate.seq_len, a.steps, a.cpus, a.order)

    arms = ["plain", "modpipe"] if a.order == "plain-first" else ["modpipe", "plain"]
    results = {}
    for name in arms:
        results[name] = (plain_arm(cfg, curate_out, a.steps, a.cpus) if name == "plain"
                         else modpipe_arm(cfg, curate_out, work / "modpipe"))
        log.info("%s: %s", name, {k: v for k, v in results[name].items() if k != "loss_curve"})
    plain, ours = results["plain"], results["modpipe"]
    ratio = round(ours["tokens_per_s"] / plain["tokens_per_s"], 3)
    summary = {"ratio": ratio, "end_to_end_ratio": round(ours["end_to_end_tokens_per_s"]
                                                         / plain["end_to_end_tokens_per_s"], 3),
               "goal": ">= 0.9", "goal_met": ratio >= 0.9}
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = None
    record = {"when": datetime.now(timezone.utc).isoformat(), "host": platform.node(), "cpus": os.cpu_count(),
              "load_1min": load, "args": vars(a), "model": cfg.model.model_dump(), "summary": summary,
              "arms": results}
    out = Path(a.out) / f"pretrain_overhead-{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2))
    if a.work is None:
        shutil.rmtree(work, ignore_errors=True)

    print(f"\n| arm | params | batch x seq | steps | tokens/s (steady) | ms/step | tokens/s (end to end) | wall s | "
          f"final loss |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r, label in ((plain, f"plain torch, 1 process x {a.cpus} threads"),
                     (ours, f"modpipe pretrain, {ours['workers']} Ray workers, ZeRO-{ours['zero_stage']}")):
        print(f"| {label} | {r['params'] / 1e6:.2f}M | {r['batch']} x {r['seq']} | {r['steps']} | "
              f"{r['tokens_per_s']:,.0f} | {r['ms_per_step']} | {r['end_to_end_tokens_per_s']:,.0f} | "
              f"{r['wall_s']:.0f} | {r['final_loss']} |")
    print(f"\nratio {ratio}  (modpipe / plain tokens/s, steady state; end to end {summary['end_to_end_ratio']}; "
          f"goal >= 0.9 {'met' if summary['goal_met'] else 'NOT met'}); load {load}; {out}")


if __name__ == "__main__":
    main()
