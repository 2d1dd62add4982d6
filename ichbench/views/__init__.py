"""What a stored result looks like as tables, whatever prints it.

The tables are plain data (`TableData`, rows of formatted cells) built from the store's
typed reads; the terminal (ichbench.cli.render) and the report (ichbench.report.html,
ichbench.report.markdown) only render them, so a number reads the same everywhere and
`ichbench show` and the report state the same provenance.
"""

from __future__ import annotations

from ichbench.views.model import Row, TableData, Wording
from ichbench.views.run_data import RunData, load_run_data

__all__ = ["Row", "RunData", "TableData", "Wording", "load_run_data"]
