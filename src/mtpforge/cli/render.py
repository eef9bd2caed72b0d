"""Human renderings of reports. Data goes to stdout; nothing here prints."""

from __future__ import annotations

from typing import Any

from mtpforge.diagnosis.doctor import DoctorReport
from mtpforge.units import human


def count(n: float) -> str:
    """Parameters as a short human figure (27.78 B, 425.0 M)."""
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return str(int(n))


def render_inspect(d: dict[str, Any]) -> str:
    layers = d["layers"]
    kinds = " + ".join(f"{v} {k}" for k, v in layers.items() if k != "total")
    lines = [
        f"{d['path']}",
        f"  family        {d['family']} ({d['architecture']})",
        f"  layers        {layers['total']}: {kinds}",
        "",
        f"  {'group':<12}{'tensors':>9}{'parameters':>14}{'bytes':>12}",
    ]
    for group, row in d["groups"].items():
        if row["tensors"]:
            lines.append(f"  {group:<12}{row['tensors']:>9}{count(row['parameters']):>14}{human(row['bytes']):>12}")
    total_tensors = sum(r["tensors"] for r in d["groups"].values())
    lines.append(f"  {'total':<12}{total_tensors:>9}{count(d['parameters']):>14}{human(d['bytes']):>12}")
    lines.append(f"  ({d['parameters']:,} parameters)")
    lines.append("")
    lines.append("  dtypes        " + ", ".join(f"{k} {human(v)}" for k, v in d["dtypes"].items()))
    lines.append("  quantization  " + _quant_line(d["quantization"]))
    lines.append("  MTP           " + _mtp_line(d["mtp"]))
    lines.append("  vision        " + _vision_line(d["vision"]))
    s = d["shards"]
    index = f"indexed, total_size {s['total_size']:,}" if s["indexed"] and s["total_size"] is not None else (
        "indexed" if s["indexed"] else "no index")
    lines.append(f"  shards        {s['count']} file(s), {human(s['file_bytes'])} in files, {index}")
    return "\n".join(lines)


def _quant_line(q: dict[str, Any] | None) -> str:
    if q is None:
        return "none (unquantized)"
    parts = [f"{c['method']}: {', '.join(c['schemes'])} ({c['source']}, {len(c['ignore'])} ignore entries)" for c in q["configs"]]
    if q["unsupported_method"]:
        parts.append(f"{q['unsupported_method']} (not analysed by mtpforge)")
    parts += [f"INVALID: {m}" for m in q["invalid"]]
    cover = ", ".join(f"{g} {r['quantized']}/{r['total']}" for g, r in q["linear_quantized"].items())
    return "; ".join(parts) + (f"\n                linear weights quantized: {cover}" if cover else "")


def _mtp_line(m: dict[str, Any]) -> str:
    declared = (f"declared {m['declared_layers']} layer(s) ({m['config_key']})" if m["declared_layers"]
                else f"not declared ({m['config_key']})")
    if not m["present"]:
        present = "ABSENT" + (f", {m['unindexed_tensors']} tensors sit unindexed" if m["unindexed_tensors"] else "")
    else:
        present = f"{m['tensors']}/{m['expected_tensors']} tensors, {human(m['bytes'])}"
        present += f", {m['quantized']} quantized" if m["quantized"] else ", unquantized"
    return f"{declared}; {present}"


def _vision_line(v: dict[str, Any]) -> str:
    if not v["declared"]:
        return "none (text-only architecture)"
    state = "language_model_only" if v["language_model_only"] else "declared"
    return f"{state}; {v['tensors']} tensors, {human(v['bytes'])}" if v["tensors"] else f"{state}; stripped (no tensors)"


def render_doctor(report: DoctorReport, max_tensors: int = 4) -> str:
    d = report.to_dict()
    lines = [f"{d['path']} ({d['family']})"]
    for f in d["findings"]:
        lines.append(f"  {f['severity']:<8}{f['code']}: {f['message']}")
        fix = f["fix"] + (f"  ->  {f['command']}" if f["command"] else "")
        lines.append(f"  {'':<8}fix: {fix}")
        if f["tensors"]:
            shown = ", ".join(f["tensors"][:max_tensors])
            more = f" (+{len(f['tensors']) - max_tensors} more)" if len(f["tensors"]) > max_tensors else ""
            lines.append(f"  {'':<8}tensors: {shown}{more}")
        if f["files"]:
            lines.append(f"  {'':<8}files: {', '.join(f['files'])}")
    c = d["counts"]
    verdict = "healthy" if not d["findings"] else ("no errors" if d["ok"] else "FAILED")
    lines.append(f"{verdict}: {c['error']} error(s), {c['warning']} warning(s), {c['info']} info")
    return "\n".join(lines)


def render_verify(d: dict[str, Any]) -> str:
    lines = [f"{d['candidate']}: {d['verdict'].upper()}  ({d['prompts']} prompts x {d['new_tokens']} greedy tokens, k={d['k']})"]
    rows = [("candidate", d["acceptance"]), ("reference", d["reference_acceptance"]),
            ("candidate in vLLM", d["engine_acceptance"])]
    positions = "".join(f"{'pos ' + str(j) + ' (95% interval)':>22}" for j in range(d["k"]))
    header = "  " + f"{'acceptance':<20}" + positions + f"{'mean len':>10}{'drafts':>8}"
    shown = [(label, a) for label, a in rows if a]
    if shown:
        lines.append(header)
    for label, a in shown:
        bounds = a.get("interval95_per_position") or [[r, r] for r in a["acceptance_per_position"]]
        rates = "".join(f"{f'{100 * r:.1f}% [{100 * lo:.1f}-{100 * hi:.1f}]':>22}"
                        for r, (lo, hi) in zip(a["acceptance_per_position"], bounds, strict=True))
        lines.append(f"  {label:<20}{rates}{a['mean_acceptance_length']:>10.2f}{a['drafts']:>8}")
    if d.get("acceptance_source"):
        text = f", on {d['sequences_source']}" if d.get("sequences_source") else ""
        lines.append(f"  counted by {d['acceptance_source']}{text}")
    for c in d.get("comparisons") or []:
        apart = [str(p["position"]) for p in c["positions"] if not p["agree"]]
        lines.append(f"  {c['a']} vs {c['b']}: " + ("agree within their 95% intervals at every position" if not apart else
                     f"DIFFER beyond their 95% intervals at position {', '.join(apart)}"))
    dv = d["divergence"]
    if dv:
        lines.append(f"  KL(reference||candidate) mean {dv['kl_mean_nats']:.5f} nats "
                     f"(p50 {dv['kl_p50_nats']:.5f}, p90 {dv['kl_p90_nats']:.5f}, "
                     f"p99 {dv['kl_p99_nats']:.5f}); top-1 agreement {100 * dv['top1_agreement']:.1f}%; "
                     f"perplexity {dv['perplexity_candidate']:.3f} vs {dv['perplexity_reference']:.3f} "
                     f"over {dv['positions']} positions")
    lines += [f"  - {r}" for r in d["reasons"]]
    lines += [f"  FAILED: {t}" for t in d["failed_thresholds"]]
    if d["chart"]:
        lines.append(f"  chart: {d['chart']}")
    return "\n".join(lines)


def render_plan(d: dict[str, Any]) -> str:
    from mtpforge.units import gib

    r, w = d["request"], d["weights"]
    k = r["spec_tokens"]
    mtp, vision = gib(w["mtp"]) if k else "not loaded", "not loaded" if r["language_model_only"] else gib(w["vision"])
    pool = "  (given)" if r["kv_cache_memory"] is not None else f"  (after {gib(r['reserve'])} reserve)"
    lines = [
        f"{d['path']} on {gib(r['gpu_memory'])} x {r['util']} (TP {r['tensor_parallel']}), KV {r['kv_dtype']}, "
        f"MTP {'k=' + str(k) if k else 'off'}, max-model-len {d['max_model_len']}",
        f"  weights loaded      {gib(d['weights_loaded'])}  (trunk {gib(w['trunk'])}, embeddings {gib(w['embeddings'])}, "
        f"MTP {mtp}, vision {vision})",
        f"  KV cache pool       {gib(d['kv_pool'])}" + pool,
        f"  KV per token        {d['kv_bytes_per_token_per_layer']} B x {d['attention_layers']} attention layers "
        "(MTP included when drafting)",
        f"  GDN state           {d['gdn_state_per_layer'] / 2**20:.2f} MiB x {d['gdn_layers']} layers = "
        f"{d['gdn_state_per_sequence'] / 2**20:.1f} MiB per sequence",
        f"  blocks              {d['num_blocks']} of {d['block_size']} tokens, {d['groups']} groups of {d['group_size']} layers"
        if d.get("engine", "vllm") == "vllm" else
        f"  GDN state slots     {d['gdn_state_slots']:,} (SGLang: KV pages of 1 token, running requests <= slots / 3)"
        if d["gdn_layers"] else "  KV pages            1 token each (SGLang; attention only, no GDN state)",
        f"  KV tokens           {d['kv_tokens']:,}",
        f"  max concurrency     {d['max_concurrency']:.2f}x at {d['max_model_len']:,} tokens  "
        f"->  {'--max-num-seqs' if d.get('engine', 'vllm') == 'vllm' else '--max-running-requests'} {d['safe_max_num_seqs']}",
        f"  longest context     {d['longest_context_that_fits']:,} tokens for one request",
    ]
    lines += [f"  PROBLEM: {p}" for p in d["problems"]]
    return "\n".join(lines)


def render_bench(d: dict[str, Any]) -> str:
    def ms(stats: dict[str, float] | None, key: str) -> str:
        return f"{stats[key] * 1000:.1f}" if stats else "-"

    lines = []
    for run in d["runs"]:
        lines += [f"{run['url']} ({run['model']})",
                  f"  {'conc':>5}{'ok/sent':>9}{'tok/s':>9}{'TTFT p50':>10}{'p99':>8}{'TPOT p50':>10}{'ITL p99':>9}  acceptance"]
        for lv in run["levels"]:
            spec = lv["spec_decode"]
            acc = (" / ".join(f"{100 * a:.0f}%" for a in spec["per_position"])
                   + f"  (mean length {spec['mean_acceptance_length']})" if spec and spec["per_position"] else "-")
            lines.append(f"  {lv['concurrency']:>5}{lv['completed']:>5}/{lv['requests']:<3}{lv['output_tokens_per_s'] or 0:>9.1f}"
                         f"{ms(lv['ttft_s'], 'p50'):>10}{ms(lv['ttft_s'], 'p99'):>8}{ms(lv['tpot_s'], 'p50'):>10}"
                         f"{ms(lv['itl_s'], 'p99'):>9}  {acc}")
            lines += [f"        {n} x {err}" for err, n in lv["errors"].items()]
    def x(ratio: float | None) -> str:
        return "-" if ratio is None else f"{ratio}x"

    if d.get("comparison"):
        lines.append(f"first server over second ({d['runs'][0]['url']} / {d['runs'][1]['url']}):")
    for row in d.get("comparison", []):
        lines.append(f"  {row['concurrency']:>5} streams: tok/s {x(row['output_tokens_per_s'])}, TTFT p50 {x(row['ttft_p50'])}, "
                     f"TPOT p50 {x(row['tpot_p50'])}")
    lines.append("  (times in ms)")
    return "\n".join(lines)
