"""heal's training step at the real Qwen3.6-27B head dimensions, on CPU: time per 1K training tokens and peak memory.

    python bench/heal_scale.py [--tokens 32] [--steps 1] [--k 3] [--loss kl] [--optimizer adamw|none]
                               [--lm-head-dtype float32|bfloat16] [--json bench/out/heal_scale.json]

The head is built from the real config (`/work/shared/reference/qwen3.6-27b/config.json`: hidden 5120, 24 query /
4 KV heads of 256, MLP 17408, one MTP layer: 425M parameters, float32 master weights, AdamW), with a 248,320-row
`lm_head` (float32, as `heal` loads it on CPU: this machine's AVX2 cores run BF16 matrix products 5x slower than
float32; `--lm-head-dtype bfloat16` halves its memory) and random trunk hidden states standing in for a capture
(the values do not change the work). Each
step is exactly what `mtpforge heal` runs: `heal.train.chain_loss` over one sequence of `--tokens` tokens, K chained
steps, the chunked loss through `lm_head` (`heal.loss`), backward, gradient clipping and an AdamW step
(`--optimizer none` leaves the step out: its two float32 moments are 8 bytes per parameter, 3.4 GB here).

`embed_tokens` is allocated without being written (the pages of rows never read stay unmapped, as with a
memory-mapped shard) and only the rows the sequence uses are filled: heal reads a few embedding rows, never the whole table.

Anchor, in the same run: one `lm_head` forward over the same rows the loss sees (K x tokens rows, chunked), the
least any distillation through a 248K vocabulary costs. Peak memory is the process's `ru_maxrss`; for scale, the
full-vocab float32 logits of all those rows at once (what the chunked loss avoids) are printed too.
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import torch
from report import emit  # bench/report.py, beside this script

from mtpforge.heal.data import Sequence, chunk_rows, greedy_tokens
from mtpforge.heal.train import Frozen, chain_loss
from mtpforge.reference.classes import RUNTIMES, text_config
from mtpforge.reference.mtp import MtpHead

CONFIG = Path(__file__).resolve().parents[2] / "shared" / "reference" / "qwen3.6-27b" / "config.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=CONFIG)
    parser.add_argument("--tokens", type=int, default=32, help="tokens in the training sequence of each step")
    parser.add_argument("--steps", type=int, default=1, help="timed optimizer steps (after one warm-up step)")
    parser.add_argument("--optimizer", choices=["adamw", "none"], default="adamw")
    parser.add_argument("--lm-head-dtype", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument("--k", type=int, default=3)
    parser.add_argument("--loss", choices=["kl", "ce"], default="kl")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    torch.manual_seed(0)
    config = json.loads(args.config.read_text())
    runtime = RUNTIMES["qwen3_5"]
    tc = text_config(runtime, config)
    head = MtpHead(tc, 1, runtime)
    params = sum(p.numel() for p in head.parameters())
    vocab, hidden_size = tc.vocab_size, tc.hidden_size
    lm_head = torch.randn(vocab, hidden_size, dtype=getattr(torch, args.lm_head_dtype)).mul_(0.02)
    ids = torch.randint(0, 4096, (args.tokens,))
    embed = torch.empty(vocab, hidden_size, dtype=torch.bfloat16)  # rows never read stay unmapped
    embed[:4096] = torch.randn(4096, hidden_size, dtype=torch.bfloat16) * 0.02
    trunk_hidden = torch.nn.functional.normalize(torch.randn(args.tokens, hidden_size), dim=-1) * hidden_size ** 0.5
    seq = Sequence(ids, trunk_hidden.to(torch.bfloat16), greedy_tokens(trunk_hidden, lm_head), 0)
    frozen = Frozen(embed, lm_head)
    optimizer = torch.optim.AdamW(head.parameters(), lr=1e-4) if args.optimizer == "adamw" else None
    head.train()

    def step() -> float:
        start = time.perf_counter()
        head.zero_grad(set_to_none=True)
        chain_loss(head, frozen, seq, args.k, args.loss).loss.backward()
        torch.nn.utils.clip_grad_norm_(head.parameters(), 1.0)
        if optimizer is not None:
            optimizer.step()
        return time.perf_counter() - start

    step()  # warm-up: allocates the optimizer state
    times = [step() for _ in range(args.steps)]
    rows = sum(max(args.tokens - j, 0) for j in range(1, args.k + 1))
    start = time.perf_counter()
    with torch.no_grad():
        probe = trunk_hidden.repeat((rows + args.tokens - 1) // args.tokens, 1)[:rows]
        greedy_tokens(probe, lm_head)
    anchor = time.perf_counter() - start
    per_step = min(times)
    per_1k = per_step / args.tokens * 1000
    emit("heal_scale", {
        "head_parameters": params, "vocab": vocab, "hidden": hidden_size, "k": args.k, "loss": args.loss,
        "optimizer": args.optimizer, "lm_head_dtype": args.lm_head_dtype,
        "tokens_per_step": args.tokens, "loss_rows_per_step": rows, "chunk_rows": chunk_rows(vocab),
        "step_seconds": [round(t, 2) for t in times], "seconds_per_1k_tokens": round(per_1k, 1),
        "anchor_lm_head_forward_seconds": round(anchor, 2), "step_over_anchor": round(per_step / anchor, 1),
        "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
        "full_vocab_logits_gib_avoided": round(rows * vocab * 4 / 2**30, 2),
        "torch_threads": torch.get_num_threads(),
    }, args.json)


if __name__ == "__main__":
    main()
