"""Train the tiny Qwen3.5 model that ships with mtpforge, and its head-less finetune.

    python scripts/train_tiny.py --out src/mtpforge/models [--steps 2500] [--finetune-steps 400]

Seeded and reproducible on one machine; ~25 minutes on 2 CPU cores. Steps:

1. Text: the Python standard library's own sources (`sysconfig` stdlib path),
   files in sorted order. `Lib/test` is kept apart for the finetune; every 40th
   other file is held out for the verify prompts.
2. Tokenizer: byte-level BPE (tokenizers), 1024 tokens, trained on that text.
3. Model: a `Qwen3_5ForConditionalGeneration` checkpoint (3 Gated DeltaNet layers
   + 1 gated full-attention layer, hidden 128, GDN head dim 128 so that vLLM's
   CPU build serves it, a tiny untrained vision tower) and one MTP layer.
   Trunk and head train jointly: next-token loss + 0.5 x the head's loss on
   token t+2, the head reading the trunk's post-final-norm hidden state at t
   (detached) and the embedding of token t+1, at position t, as vLLM runs it.
4. Finetune: the trunk alone, on `Lib/test`, then saved without `mtp.*` but
   still declaring `mtp_num_hidden_layers: 1` and text-only, as allenai/tmax-27b.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sysconfig
import time
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from mtpforge.checkpoint.writer import TensorData, write_safetensors
from mtpforge.families import FAMILIES, VISION
from mtpforge.formats.values import encode
from mtpforge.reference.model import build_model
from mtpforge.testing.factory import tiny_config

SEED = 0
VOCAB = 1024
SEQ = 128
BATCH = 16
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def stdlib_texts() -> tuple[list[str], list[str], list[str]]:
    """(train, held-out, finetune) source texts of the standard library, in a fixed order."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in root.rglob("*.py") if "site-packages" not in p.parts)
    train, held, tune = [], [], []
    for i, path in enumerate(files):
        text = path.read_text(encoding="utf-8", errors="replace")
        if "test" in path.relative_to(root).parts[:1]:
            tune.append(text)
        elif i % 40 == 0:
            held.append(text)
        else:
            train.append(text)
    return train, held, tune


def train_tokenizer(texts: list[str]) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def encode_all(tok: Tokenizer, texts: list[str]) -> torch.Tensor:
    eos = tok.token_to_id("<|endoftext|>")
    ids: list[int] = []
    for enc in tok.encode_batch(texts):
        ids.extend([*enc.ids, eos])
    return torch.tensor(ids, dtype=torch.long)


def train(trunk: torch.nn.Module, head: torch.nn.Module | None, data: torch.Tensor, steps: int, lr: float, seed: int) -> None:
    params = list(trunk.parameters()) + (list(head.parameters()) if head is not None else [])
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01, betas=(0.9, 0.95))
    gen = torch.Generator().manual_seed(seed)
    positions = torch.arange(SEQ)[None].expand(BATCH, SEQ)
    start = time.time()
    for step in range(steps):
        warm = min(1.0, (step + 1) / 100)
        for g in opt.param_groups:
            g["lr"] = lr * warm * 0.5 * (1 + math.cos(math.pi * step / steps))
        offsets = torch.randint(0, len(data) - SEQ - 2, (BATCH,), generator=gen)
        batch = torch.stack([data[o : o + SEQ + 2] for o in offsets.tolist()])
        x, y1, y2 = batch[:, :SEQ], batch[:, 1 : SEQ + 1], batch[:, 2 : SEQ + 2]
        hidden = trunk.model(input_ids=x).last_hidden_state  # post-final-norm, as vLLM hands it to the head
        loss = torch.nn.functional.cross_entropy(trunk.lm_head(hidden).flatten(0, 1), y1.flatten())
        head_loss = torch.tensor(0.0)
        if head is not None:
            drafted = head(trunk.model.embed_tokens(y1), hidden.detach(), positions)
            head_loss = torch.nn.functional.cross_entropy(trunk.lm_head(drafted).flatten(0, 1), y2.flatten())
        (loss + 0.5 * head_loss).backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if step % 100 == 0 or step == steps - 1:
            print(f"step {step:5d}  loss {loss.item():.3f}  head {head_loss.item():.3f}  {time.time() - start:.0f}s", flush=True)


def save(out: Path, config: dict, trunk: torch.nn.Module, head: torch.nn.Module | None, tok: Tokenizer, card: str,
         *, vision: bool) -> None:
    out.mkdir(parents=True, exist_ok=True)
    tensors: list[TensorData] = []
    family = FAMILIES["qwen3_5"]
    expected = family.expected(config, vision=vision)
    state = {("lm_head." + k[len("lm_head."):] if k.startswith("lm_head.") else "model.language_model." + k[len("model."):]): v
             for k, v in trunk.state_dict().items()}
    if head is not None:
        state.update({f"mtp.{k}": v for k, v in head.state_dict().items() if not k.endswith("inv_freq")})
    rng = np.random.default_rng(SEED)
    for name, spec in expected.items():
        if spec.group == VISION:  # untrained: the tiny tower only has to exist and load
            values = rng.normal(0, 0.02, spec.shape) if not name.endswith(".bias") else np.zeros(spec.shape)
        elif name in state:
            values = state[name].detach().float().numpy()
        else:
            continue  # the finetune has no head
        tensors.append(TensorData(name, "BF16", spec.shape, encode("BF16", values)))
    write_safetensors(out / "model.safetensors", tensors, {"format": "pt"})
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    tok.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": 4096, "eos_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>", "bos_token": None, "unk_token": None}, indent=2) + "\n")
    (out / "chat_template.jinja").write_text(CHAT_TEMPLATE)
    (out / "generation_config.json").write_text(json.dumps({"eos_token_id": tok.token_to_id("<|endoftext|>"),
                                                            "pad_token_id": tok.token_to_id("<|endoftext|>")}, indent=2) + "\n")
    (out / "README.md").write_text(card)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=2500)
    parser.add_argument("--finetune-steps", type=int, default=400)
    args = parser.parse_args()
    random.seed(SEED)
    np.random.seed(SEED)
    torch.manual_seed(SEED)
    torch.set_num_threads(2)
    train_texts, held, tune_texts = stdlib_texts()
    tok = train_tokenizer(train_texts)
    data, tune_data = encode_all(tok, train_texts), encode_all(tok, tune_texts)
    print(f"tokens: train {len(data):,}  finetune {len(tune_data):,}  held-out files {len(held)}", flush=True)

    config = tiny_config(engine=True)
    config["text_config"].update(vocab_size=VOCAB, intermediate_size=384, eos_token_id=tok.token_to_id("<|endoftext|>"),
                                 max_position_embeddings=4096)
    config.update(eos_token_id=tok.token_to_id("<|endoftext|>"), language_model_only=False)
    trunk, head = build_model(config, mtp_layers=1)
    train(trunk, head, data, args.steps, 3e-3, SEED)
    base_dir = args.out / "tiny-qwen3.5"
    save(base_dir, config, trunk, head, tok, base_card(args, len(data)), vision=True)

    train(trunk, None, tune_data, args.finetune_steps, 1e-3, SEED + 1)
    tuned = {**config, "language_model_only": True}
    save(args.out / "tiny-qwen3.5-finetune", tuned, trunk, None, tok, finetune_card(args, len(tune_data)), vision=False)

    prompts = [t[:400] for t in held if len(t) >= 400][:24]
    (args.out / "prompts.json").write_text(json.dumps({"source": "held-out Python standard library files", "prompts": prompts},
                                                      indent=1))
    print("done", flush=True)


def base_card(args: argparse.Namespace, tokens: int) -> str:
    return f"""---
license: apache-2.0
---
# tiny-qwen3.5 (mtpforge's bundled model)

A 1.6M-parameter `Qwen3_5ForConditionalGeneration` checkpoint: 3 Gated DeltaNet layers and
1 gated full-attention layer (hidden 128, GDN key/value head dim 128), an untrained tiny
vision tower, and one MTP layer trained jointly with the trunk. Bfloat16.

Trained by `python scripts/train_tiny.py --out src/mtpforge/models --steps {args.steps} --finetune-steps {args.finetune_steps}`
(seed {SEED}, 2 CPU threads) on the Python {sysconfig.get_python_version()} standard library's sources
({tokens:,} tokens, byte-level BPE of {VOCAB} tokens, sequences of {SEQ}, batch {BATCH}, AdamW, cosine schedule).
The MTP head learns token t+2 from the trunk's post-final-norm hidden state at t and the embedding of
token t+1, at position t, exactly as vLLM runs it.

What it measures: `mtpforge verify` on the bundled prompts (see the project README).
"""


def finetune_card(args: argparse.Namespace, tokens: int) -> str:
    return f"""---
license: apache-2.0
base_model: tiny-qwen3.5
---
# tiny-qwen3.5-finetune (no MTP head)

tiny-qwen3.5's trunk trained {args.finetune_steps} more steps on the standard library's `test/` package
({tokens:,} tokens), then saved without its MTP head and without vision tensors, but still declaring
`mtp_num_hidden_layers: 1`: the allenai/tmax-27b situation. `mtpforge graft --donor tiny-qwen3.5` restores a head.
"""


if __name__ == "__main__":
    main()
