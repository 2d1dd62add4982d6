"""The command-line reference (docs/cli.md), rendered from every command's `--help`.

The reference is generated, never written by hand, so it cannot drift from the options the
commands take; a test fails when the committed file differs from a fresh rendering. Help
is rendered as plain text at a fixed width, whatever the terminal, so the file is the same
on every machine. Regenerate it with `python -m ichbench.cli.reference docs/cli.md`.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import typer

WIDTH = 100
REGENERATE = "python -m ichbench.cli.reference docs/cli.md"
TITLE = "# ichbench command-line reference"


def _context(command, name: str, parent=None):
    """A help context of fixed width (click's classes as typer ships them)."""
    return command.context_class(
        command, info_name=name, parent=parent, terminal_width=WIDTH, max_content_width=WIDTH
    )


def _commands(ctx) -> Iterator:
    """The context of every visible command from `ctx` down, depth first, in the order the
    CLI lists them."""
    yield ctx
    command = ctx.command
    if not hasattr(command, "list_commands"):
        return
    for name in command.list_commands(ctx):
        sub = command.get_command(ctx, name)
        if sub is not None and not sub.hidden:
            yield from _commands(_context(sub, name, ctx))


def plain_help(ctx) -> str:
    """`--help` of the context's command as plain text, `WIDTH` columns, no colour."""
    command = ctx.command
    if hasattr(command, "rich_markup_mode"):
        command.rich_markup_mode = None  # typer: click's plain formatter, not rich panels
    formatter = ctx.make_formatter()
    command.format_help(ctx, formatter)
    lines = formatter.getvalue().splitlines()
    return "\n".join(line.rstrip() for line in lines).strip("\n")


def render(app: typer.Typer | None = None) -> str:
    """The whole reference as Markdown: one section per command, its help verbatim."""
    if app is None:
        from ichbench.cli.app import create_app

        app = create_app()
    top = _context(typer.main.get_command(app), "ichbench")
    parts = [
        TITLE,
        "",
        "Generated from every command's `--help`; do not edit. Regenerate with",
        f"`{REGENERATE}`.",
        "",
    ]
    for ctx in _commands(top):
        parts += [f"## `{ctx.command_path}`", "", "```text", plain_help(ctx), "```", ""]
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> None:
    """Write the reference to the path given (stdout without one)."""
    args = sys.argv[1:] if argv is None else argv
    text = render()
    if not args:
        sys.stdout.write(text)
        return
    target = Path(args[0])
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
