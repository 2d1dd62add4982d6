"""`ichbench plugins`: every registered name, built-in or third-party, and where it came from."""

from __future__ import annotations

from typing import Any

import typer
from rich import box
from rich.console import Group
from rich.markup import escape
from rich.padding import Padding
from rich.table import Table
from rich.text import Text

from ichbench.cli.common import emit_json, err, out
from ichbench.cli.options import JsonOpt
from ichbench.plugins import Plugins, get_plugins
from ichbench.registry import KIND_LABELS, Entry

WIDE = 130  # columns needed for the table layout


def entry_row(entry: Entry) -> dict[str, Any]:
    """One plugin name as the JSON listing shows it."""
    return {
        "kind": entry.kind,
        "name": entry.name,
        "plugin": entry.plugin,
        "distribution": entry.distribution,
        "version": entry.version,
        "help": entry.help,
    }


def _table(entries: list[Entry]) -> Table:
    table = Table(title="ichbench plugins", box=box.SIMPLE_HEAD)
    for column in ("kind", "name", "plugin module", "distribution", "version"):
        table.add_column(column, no_wrap=True)
    table.add_column("help", ratio=1)
    for e in entries:
        table.add_row(KIND_LABELS[e.kind], e.name, e.plugin, e.distribution, e.version, e.help)
    return table


def _stacked(entries: list[Entry]) -> Group:
    """The same fields for a narrow terminal: one line per name, its help indented below,
    instead of a six-column table squeezed until nothing is readable."""
    lines = []
    for e in entries:
        head = Text.assemble(
            (f"{KIND_LABELS[e.kind]:<14}", "cyan"),
            (e.name, "bold"),
            f"  {e.distribution} {e.version}  ({e.plugin})",
        )
        lines.append(head)
        if e.help:
            lines.append(Padding(Text(e.help, style="dim"), (0, 0, 0, 14)))
    return Group(*lines)


def print_plugin_warnings(plugins: Plugins | None = None) -> None:
    """Each plugin warning once per process, as a `Warning: ...` line on stderr (what a
    command calls before it uses the plugins)."""
    for warning in (plugins or get_plugins()).pending_warnings():
        err.print(f"[yellow]Warning:[/] {escape(warning)}", highlight=False, soft_wrap=True)


def register(app: typer.Typer) -> None:
    @app.command("plugins")
    def plugins(
        as_json: JsonOpt = False,
    ) -> None:
        """List every strategy, backbone, aggregation rule and dataset, with its package."""
        plugins = get_plugins()
        entries = plugins.registry.entries()
        print_plugin_warnings(plugins)
        if as_json:
            emit_json([entry_row(e) for e in entries])
        elif out.width >= WIDE:
            out.print(_table(entries))
        else:
            out.print(_stacked(entries))
