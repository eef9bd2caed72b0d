"""The click commands: parse, call the library function of the same name, render.

Each command returns its exit code; `--json` prints exactly one JSON document
on stdout (with a `schema` field), everything else goes to stderr.
"""

from __future__ import annotations

import json
from typing import Any

import click

from mtpforge import __version__
from mtpforge.errors import EXIT_CHECKS_FAILED, EXIT_OK

JSON_HELP = "Print one JSON document on stdout instead of the human summary."
EXIT_CODES = "Exit codes: 0 ok, 1 checks failed, 2 usage error, 3 bad input, 70 internal bug."


@click.group(epilog=EXIT_CODES)
@click.version_option(__version__, prog_name="mtpforge")
def app() -> None:
    """Build, repair, verify and benchmark quantized hybrid checkpoints whose MTP head must keep drafting."""


def _emit(document: dict[str, Any], as_json: bool, human: str) -> None:
    click.echo(json.dumps(document, indent=2) if as_json else human)


@app.command(epilog="Examples:\n\n\b\n  mtpforge inspect ./Qwen3.6-27B\n  mtpforge inspect ./ckpt --json | jq .mtp\n\n" + EXIT_CODES)
@click.argument("path", type=click.Path(file_okay=False, path_type=str))
@click.option("--json", "as_json", is_flag=True, help=JSON_HELP)
def inspect(path: str, as_json: bool) -> int:
    """Summarise a checkpoint: family, layers, parameters and bytes by group, quantization, MTP and vision status."""
    from mtpforge.cli.render import render_inspect
    from mtpforge.inspection import inspect_checkpoint

    report = inspect_checkpoint(path).to_dict()
    _emit(report, as_json, render_inspect(report))
    return EXIT_OK


@app.command(epilog="Examples:\n\n\b\n  mtpforge doctor ./Qwen3.6-27B-AWQ\n  mtpforge doctor ./ckpt --json --strict\n\n" + EXIT_CODES)
@click.argument("path", type=click.Path(file_okay=False, path_type=str))
@click.option("--json", "as_json", is_flag=True, help=JSON_HELP)
@click.option("--strict", is_flag=True, help="Fail (exit 1) on warnings too, not only on errors.")
def doctor(path: str, as_json: bool, strict: bool) -> int:
    """Diagnose a checkpoint against the finding catalogue; exit 1 when errors are found."""
    from mtpforge.cli.render import render_doctor
    from mtpforge.doctor import doctor as run_doctor

    report = run_doctor(path)
    _emit(report.to_dict(), as_json, render_doctor(report))
    failed = not report.ok or (strict and report.count("warning") > 0)
    return EXIT_CHECKS_FAILED if failed else EXIT_OK


@app.command()
@click.option("--workdir", type=click.Path(file_okay=False, path_type=str), default=None,
              help="Where to build the demo checkpoints (default: a temporary directory, removed afterwards).")
def demo(workdir: str | None) -> int:
    """Run the story end to end on small checkpoints built on the spot."""
    from mtpforge.demo import run_demo

    return run_demo(workdir)
