"""The run's configuration as a table of settings: one row per setting, so that a reader
finds `epochs` or `strategies` at a glance instead of inside one long line of JSON."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

from ichbench.formatting import DASH
from ichbench.views import Row, TableData

CONFIG_ROW = "Configuration"  # the provenance table's one-line JSON, shown here instead


def setting_text(value: Any) -> str:
    """A setting's value in one cell: lists joined by commas, nested values as compact
    JSON, booleans and null as a config file spells them."""
    if value is None:
        return DASH
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        return ", ".join(_item(v) for v in value) or "none"
    if isinstance(value, dict):
        return _compact(value)
    return str(value)


def _item(value: Any) -> str:
    return _compact(value) if isinstance(value, dict | list | tuple) else setting_text(value)


def _compact(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def config_table(cfg: dict[str, Any], table_id: str = "config") -> TableData:
    """Every setting the run was given, sorted by name."""
    return TableData(
        id=table_id,
        title="Configuration: every setting of the run",
        columns=["Setting", "Value"],
        rows=[Row([key, setting_text(cfg[key])]) for key in sorted(cfg)],
        numeric_from=2,
        caption="The settings as the store holds them for this run.",
    )


def without_config_row(table: TableData) -> TableData:
    """The provenance table less its one-line JSON of the configuration, which the report
    shows as `config_table` instead."""
    return replace(
        table, rows=[r for r in table.rows if not (r.cells and r.cells[0] == CONFIG_ROW)]
    )
