"""The `ichbench` command: built by a factory so tests never reload modules."""

from __future__ import annotations

import os
import signal
import sys
import threading

import typer
from rich.markup import escape

from ichbench import __version__
from ichbench.cli.common import err, said
from ichbench.errors import ExitCode, IchbenchError, Terminated


def _version(value: bool) -> None:
    if value:
        print(f"ichbench {__version__}")
        raise typer.Exit()


def _flags_without_type() -> None:
    """On/off flags without the `<bool>` typer prints beside each in `--help`: a flag
    takes no value, so a type column there is noise. Value options keep theirs."""
    from typer import core

    option = getattr(core, "TyperOption", None)
    shown = getattr(option, "display_type_rich", None)
    if shown is None or getattr(shown, "flags_hidden", False):
        return

    def display_type_rich(self, ctx):
        return None if self.is_flag else shown(self, ctx)

    display_type_rich.flags_hidden = True
    option.display_type_rich = display_type_rich


def create_app() -> typer.Typer:
    _flags_without_type()
    app = typer.Typer(
        name="ichbench",
        help="Train, compare and query intracranial-hemorrhage classifiers on head CT.",
        no_args_is_help=True,
        add_completion=True,  # --install-completion / --show-completion for the user's shell
        pretty_exceptions_enable=False,
        context_settings={"help_option_names": ["-h", "--help"]},
    )

    @app.callback()
    def _root(
        version: bool = typer.Option(
            False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
        debug: bool = typer.Option(False, "--debug", help="Show tracebacks on errors."),
    ) -> None:
        if debug:
            os.environ["ICHBENCH_DEBUG"] = "1"

    from ichbench.cli import (
        data_cmd,
        evaluate_cmd,
        export_cmd,
        grid_cmd,
        manage_cmd,
        plugins_cmd,
        predict_cmd,
        report_cmd,
        run_cmd,
        store_cmd,
        sync_cmd,
    )

    plugins_cmd.register(app)
    data_cmd.register(app)
    run_cmd.register(app)
    report_cmd.register(app)
    grid_cmd.register(app)
    store_cmd.register(app)
    export_cmd.register(app)
    sync_cmd.register(app)
    manage_cmd.register(app)
    evaluate_cmd.register(app)
    predict_cmd.register(app)
    return app


def _terminate(signum, frame) -> None:
    raise Terminated  # a scheduler's SIGTERM marks the run interrupted, like Ctrl-C


def main(argv: list[str] | None = None) -> None:
    """Entry point: domain errors become one `Error: ...` line and a documented exit code."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _terminate)
    app = create_app()
    said.interruption = False
    try:
        code = app(args=argv, standalone_mode=False)
        if isinstance(code, int) and code:
            # click turns Ctrl-C (and so SIGTERM) into 130; a command may have said more
            if code == ExitCode.INTERRUPTED and not said.interruption:
                err.print("[yellow]Interrupted.[/]")
            sys.exit(code)
    except IchbenchError as exc:
        if os.environ.get("ICHBENCH_DEBUG"):
            raise
        err.print(f"[bold red]Error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        sys.exit(int(exc.exit_code))
    except OSError as exc:  # a full disk, a permission: the system said no
        if os.environ.get("ICHBENCH_DEBUG"):
            raise
        where = f" ({exc.filename})" if exc.filename else ""
        err.print(
            f"[bold red]Error:[/] {escape(str(exc.strerror or exc))}{escape(where)}",
            highlight=False,
            soft_wrap=True,
        )
        sys.exit(int(ExitCode.SYSTEM))
    except KeyboardInterrupt:
        err.print("[yellow]Interrupted.[/]")
        sys.exit(int(ExitCode.INTERRUPTED))
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        err.print("[yellow]Interrupted.[/]")
        sys.exit(int(ExitCode.INTERRUPTED))
    except Exception as exc:
        if hasattr(exc, "show") and hasattr(exc, "exit_code"):  # click's usage errors
            exc.show()
            sys.exit(int(ExitCode.USAGE))
        if os.environ.get("ICHBENCH_DEBUG"):
            raise
        err.print(
            f"[bold red]Error:[/] {type(exc).__name__}: {escape(str(exc))} (rerun with "
            "--debug for the traceback)",
            highlight=False,
            soft_wrap=True,
        )
        sys.exit(int(ExitCode.INTERNAL))
