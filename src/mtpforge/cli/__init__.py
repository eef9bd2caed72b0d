"""Entry point: run the click app and map outcomes to the documented exit codes.

0 success; 1 checks failed; 2 usage error; 3 input or environment error;
70 internal bug (with its traceback). MTPFORGE_DEBUG=1 shows tracebacks for
user errors too.
"""

from __future__ import annotations

import json
import os
import sys
import traceback

import click

from mtpforge.errors import EXIT_BUG, EXIT_USAGE, MtpforgeError


def main(argv: list[str] | None = None) -> None:
    """Run `mtpforge` with `argv` (default: the process arguments) and exit."""
    from mtpforge.cli import serving  # noqa: F401  (registers plan, serve, bench, card)
    from mtpforge.cli.app import app

    try:
        # Without standalone mode click returns the command's value (our exit
        # code) or the code of ctx.exit(), and raises usage errors to us.
        code = app.main(args=argv, prog_name="mtpforge", standalone_mode=False)
    except click.ClickException as e:
        e.show()
        sys.exit(EXIT_USAGE if isinstance(e, click.UsageError) else e.exit_code)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(EXIT_USAGE)
    except MtpforgeError as e:
        if os.environ.get("MTPFORGE_DEBUG"):
            traceback.print_exc()
        click.echo(f"Error: {e}", err=True)
        if e.hint:
            click.echo(f"hint: {e.hint}", err=True)
        if "--json" in (sys.argv[1:] if argv is None else argv):  # --json promises one document on stdout, errors too
            error = {"schema": "mtpforge.error/1", "ok": False, "error": type(e).__name__, "message": str(e),
                     "hint": e.hint, "exit_code": e.exit_code}
            click.echo(json.dumps(error, indent=2))
        sys.exit(e.exit_code)
    except Exception:  # a bug: show it whole
        traceback.print_exc()
        click.echo("mtpforge hit an internal error (exit 70); please report it with the traceback above.", err=True)
        sys.exit(EXIT_BUG)
    sys.exit(code if isinstance(code, int) else 0)
