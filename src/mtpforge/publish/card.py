"""`mtpforge card`: the model card (README.md) in the seeds' shape, from what was measured.

The card reads the checkpoint itself (inspect, doctor, serve, plan: exact by
construction) and only the measurement files it is given (`verify --json`,
`bench --json`). A section whose measurement is missing says so and names the
command that would fill it; no figure is typed in or estimated.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from mtpforge.checkpoint import Checkpoint, CheckpointLike, as_checkpoint, paths
from mtpforge.diagnosis.doctor import doctor
from mtpforge.diagnosis.inspection import InspectReport, inspect_checkpoint
from mtpforge.engine.gpus import gpu_memory
from mtpforge.engine.launch import launch_line, serve_options
from mtpforge.engine.memory import PlanRequest, plan
from mtpforge.errors import CheckpointError, UsageError
from mtpforge.units import gib, human


def card(path: CheckpointLike, *, name: str | None = None, base_model: str | None = None, verify_file: str | None = None,
         bench_file: str | None = None, gpus: tuple[str, ...] = (), kv_dtype: str = "fp8", max_model_len: int | None = None,
         shown_path: str | None = None, built_with: str | None = None, util: float = 0.9, spec_tokens: int | None = None,
         serve: dict[str, Any] | None = None) -> str:
    """The card's markdown for the checkpoint at `path` (a directory or an open `Checkpoint`; `shown_path`: the path the commands
    in the card name, e.g. a build's OUT). The checkpoint's headers are read once, whatever the sections ask.
    `util` and `spec_tokens` set the memory rows (a recipe's `[card]`); `serve` is a recipe's `[serve]` table: the
    Usage section leads with that launch line, for the engine it names.

    Raises:
        UsageError: a measurement file is unreadable or not the document it should be.
        CheckpointError: the checkpoint cannot be read.
    """
    ckpt = as_checkpoint(path)
    info = inspect_checkpoint(ckpt)
    shown = shown_path or os.fspath(path)
    name = name or Path(shown).resolve().name
    base_model = base_model or _base_model_from_readme(ckpt.root)
    verify = _measurement(verify_file, "mtpforge.verify/1")
    bench = _measurement(bench_file, "mtpforge.bench/1")
    sections = [
        _front_matter(info, base_model),
        f"# {name}\n\n{_summary(info, base_model)}" + (f"\n\n{built_with}" if built_with else ""),
        _quantization(info, shown),
        _mtp(info, verify, verify_file),
        _memory(ckpt, shown, gpus, kv_dtype, max_model_len, util, spec_tokens, (serve or {}).get("engine", "vllm")),
        _usage(os.fspath(path), shown, name, serve or {}),
        _throughput(bench, bench_file),
        _files(ckpt.root, info.shards.count),
        _health(ckpt),
    ]
    return "\n\n".join(s for s in sections if s) + "\n"


def _front_matter(info: InspectReport, base_model: str | None) -> str:
    method = info.quantization.method if info.quantization else None
    # the hub's architecture tag: "qwen3" for the Qwen3.5/3.6/Next hybrids, the model_type for other families
    family_tag = "qwen3" if info.family.startswith("qwen3") else (info.model_type or info.family)
    tags = [family_tag, "mtp", "speculative-decoding"] + (["quantized", method] if method else [])
    lines = ["---", "library_name: transformers", "pipeline_tag: text-generation"]
    if base_model:
        lines.append(f"base_model: {base_model}")
    lines += ["tags:"] + [f"- {t}" for t in tags] + ["---"]
    return "\n".join(lines)


def _summary(info: InspectReport, base_model: str | None) -> str:
    q = info.quantization
    scheme = ", ".join(s for c in q.configs for s in c.schemes) if q else "unquantized"
    mtp = info.mtp
    head = (f"the MTP head kept ({mtp.tensors} tensors, {'quantized' if mtp.quantized else 'unquantized'})"
            if mtp.present else "**no MTP head** (speculative decoding unavailable; `mtpforge graft` restores it)")
    vision = "text-only (vision tower removed)" if info.vision.declared and not info.vision.tensors else (
        "with its vision tower" if info.vision.tensors else "text-only")
    layers = info.layers
    kinds = (f": {layers['linear_attention']} Gated DeltaNet + {layers.get('full_attention', 0)} full attention"
             if layers.get("linear_attention") else "")  # attention-only families (DeepSeek, GLM, MiMo) have no hybrid split
    return (f"{scheme[0].upper() + scheme[1:]} build of {'`' + base_model + '`' if base_model else 'a'} {info.family} model "
            f"({info.architecture}, {layers['total']} layers{kinds}), {vision}, with {head}.")


def _quantization(info: InspectReport, path: str) -> str:
    q = info.quantization
    rows = ["| part | tensors | bytes | linear weights quantized |", "|---|---:|---:|---:|"]
    linear = q.linear_quantized if q else {}
    for group, row in info.groups.items():
        if row.tensors:
            lq = linear.get(group)
            share = f"{lq['quantized']} / {lq['total']}" if lq else "-"
            rows.append(f"| {group} | {row.tensors} | {human(row.bytes)} | {share} |")
    text = "## Quantization\n\n"
    if q:
        for c in q.configs:
            text += f"- method `{c.method}` ({c.source}), schemes: {', '.join(c.schemes)}\n"
            text += f"- kept in high precision (`ignore`): {_ignore_summary(c.ignore)}\n"
    else:
        text += "Not quantized.\n"
    return text + "\n" + "\n".join(rows) + f"\n\nFrom `mtpforge inspect {path}`."


def _ignore_summary(ignore: list[str], shown: int = 8) -> str:
    """Patterns first, then exact names; a long list (llm-compressor writes every module) is cut, with the count."""
    ordered = sorted(ignore, key=lambda i: (not (i.startswith("re:") or "*" in i), i))
    text = ", ".join(f"`{i}`" for i in ordered[:shown]) or "nothing"
    return text + (f" and {len(ordered) - shown} more module names (config.json)" if len(ordered) > shown else "")


def _mtp(info: InspectReport, verify: dict[str, Any] | None, verify_file: str | None) -> str:
    text = "## MTP speculative decoding\n\n"
    if not info.mtp.present:
        return text + "This checkpoint has no MTP head."
    if verify is None:
        return text + ("Not measured yet: `mtpforge verify PATH --reference BASE --json > verify.json`, "
                       "then `mtpforge card --verify verify.json`.")
    acc = verify["acceptance"]
    rows = ["| draft position | acceptance |", "|---|---:|"]
    rows += [f"| {j + 1} | {100 * r:.1f} % |" for j, r in enumerate(acc["acceptance_per_position"])]
    text += "\n".join(rows) + (f"\n\nMean acceptance length {acc['mean_acceptance_length']:.2f} (of {verify['k'] + 1}); "
                               f"verdict **{verify['verdict']}**.")
    if verify.get("engine_acceptance"):
        engine = " / ".join(f"{100 * r:.1f} %" for r in verify["engine_acceptance"]["acceptance_per_position"])
        text += f" Through vLLM's own counters on the same prompts: {engine}."
    if verify.get("divergence"):
        d = verify["divergence"]
        text += (f"\n\nAgainst the reference `{verify['reference']}` over {d['positions']} positions: KL divergence mean "
                 f"{d['kl_mean_nats']:.4f} nats (p99 {d['kl_p99_nats']:.4f}), top-1 agreement {100 * d['top1_agreement']:.1f} %, "
                 f"perplexity {d['perplexity_candidate']:.3f} vs {d['perplexity_reference']:.3f}.")
    return text + (f"\n\nMeasured by `mtpforge verify` (k={verify['k']}, {verify['prompts']} prompts, "
                   f"{verify['new_tokens']} greedy tokens each), from `{Path(verify_file or '').name}`.")


def _memory(ckpt: Checkpoint, shown: str, gpus: tuple[str, ...], kv_dtype: str, max_model_len: int | None, util: float,
            spec_tokens: int | None, engine: str) -> str:
    if not gpus:
        return ""
    rows = ["| GPU memory | weights loaded | KV pool | KV tokens | concurrent requests at full context |",
            "|---|---:|---:|---:|---:|"]
    reserve = 0
    k = 0
    for gpu in gpus:
        p = plan(ckpt, PlanRequest(gpu_memory=gpu_memory(gpu, option="--gpu"), kv_dtype=kv_dtype, max_model_len=max_model_len,
                                   language_model_only=True, util=util, spec_tokens=spec_tokens, engine=engine))
        reserve, k = p.request["reserve"], p.request["spec_tokens"]
        fits = f"{p.max_concurrency:.2f}" if p.ok else "does not fit"
        rows.append(f"| {gpu} | {gib(p.weights_loaded)} | {gib(max(0, p.kv_pool))} | {p.kv_tokens:,} | {fits} |")
    arithmetic = "vLLM's hybrid KV arithmetic" if engine == "vllm" else "SGLang's Mamba-slot and token-pool arithmetic"
    return ("## Memory (planned)\n\n" + "\n".join(rows) +
            f"\n\nComputed, not measured: `mtpforge plan {shown} --gpu-memory GPU --engine {engine} --util {util} "
            f"--kv-dtype {kv_dtype} --num-speculative-tokens {k} --language-model-only`, {arithmetic} at "
            f"{max_model_len or 'the config' + chr(39) + 's maximum'} tokens, util {util}, MTP k={k}, {gib(reserve)} reserve.")


def _usage(path: str, shown: str, name: str, serve: dict[str, Any]) -> str:
    """The recipe's launch line first (the engine it names), then the other engine's line from the checkpoint alone."""
    engine = str(serve.get("engine", "vllm"))
    other = "sglang" if engine == "vllm" else "vllm"
    # A recipe's line is printed as `mtpforge serve` prints it (the card's line); without one, the model's name is served.
    first = launch_line(path, serve_options(serve, served_name=None if serve else name))
    second = launch_line(path, serve_options({}, engine=other, served_name=name))
    titles = {"vllm": "vLLM", "sglang": "SGLang"}
    text = "## Usage\n\n"
    for title, line in ((titles[engine], first), (titles[other], second)):
        text += f"{title}:\n\n```bash\n{line.shell().replace(str(path), name, 1)}\n```\n\n"
    return text + (f"From `mtpforge serve {shown}`" + (" (the recipe's [serve] settings, recorded in mtpforge-build.json; "
                                                        "flags override them)" if serve else "")
                   + "; add `--gpu-memory` for a memory-safe `--max-num-seqs`.")


def _throughput(bench: dict[str, Any] | None, bench_file: str | None) -> str:
    if bench is None:
        return ""
    o = bench["options"]
    rows = ["| server | streams | output tok/s | TTFT p50 | TPOT p50 | mean acceptance length |",
            "|---|---:|---:|---:|---:|---:|"]
    for run in bench["runs"]:
        for lv in run["levels"]:
            spec = lv["spec_decode"] or {}
            ttft = f"{lv['ttft_s']['p50'] * 1000:.0f} ms" if lv["ttft_s"] else "-"
            tpot = f"{lv['tpot_s']['p50'] * 1000:.1f} ms" if lv["tpot_s"] else "-"
            rows.append(f"| {run['url']} | {lv['concurrency']} | {lv['output_tokens_per_s']} | {ttft} | {tpot} | "
                        f"{spec.get('mean_acceptance_length') or '-'} |")
    return ("## Throughput (measured)\n\n" + "\n".join(rows) +
            f"\n\nMeasured by `mtpforge bench` ({o['num_requests']} requests per level, "
            f"{o['input_len']} input / {o['output_len']} output tokens), from `{Path(bench_file or '').name}`.")


def _files(path: Path, shards: int) -> str:
    rows = ["| file | size |", "|---|---:|"]
    for f in sorted(Path(path).iterdir()):
        if f.is_file() and not f.name.startswith("."):
            rows.append(f"| `{f.name}` | {human(f.stat().st_size)} |")
    return f"## Files\n\n{shards} safetensors shard(s).\n\n" + "\n".join(rows)


def _health(ckpt: Checkpoint) -> str:
    report = doctor(ckpt)
    return (f"## Checks\n\n`mtpforge doctor`: {report.count('error')} errors, {report.count('warning')} warnings"
            + "".join(f"\n- {f.code}: {f.message}" for f in report.findings))


def _measurement(file: str | None, schema: str) -> dict[str, Any] | None:
    if file is None:
        return None
    try:
        doc = json.loads(Path(file).read_text())
    except (OSError, ValueError) as e:
        raise UsageError(f"{file}: cannot read a measurement: {e}", hint="give the file written by `--json`") from e
    if not isinstance(doc, dict) or doc.get("schema") != schema:
        command = schema.split(".")[1].split("/")[0]
        raise UsageError(f"{file} is not a {schema} document", hint=f"it is written by `mtpforge {command} --json`")
    return doc


def _base_model_from_readme(path: Path) -> str | None:
    try:  # through checkpoint/paths.py: a README.md that links outside the directory, or a FIFO, is never read
        text = paths.read_text(path, "README.md") if paths.exists(path, "README.md") else ""
    except CheckpointError:
        return None  # doctor reports it as file-outside-checkpoint
    for line in text.splitlines():
        if line.startswith("base_model:"):
            return line.split(":", 1)[1].strip() or None
    return None
