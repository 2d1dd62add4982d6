"""`ichbench report`: one run (or several compared) as an HTML page and a Markdown file.

The report only reads: tables and curves from the store, and for Grad-CAM and t-SNE the
fold checkpoints and the run's dataset through ichbench.checkpoints. Heavy imports
(matplotlib, torch, scikit-learn) wait until a report is built, so importing this
package stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ichbench.report.build import ReportOptions, ReportResult

__all__ = ["ReportOptions", "ReportResult", "build_report"]


def __getattr__(name: str):
    if name in __all__:
        from ichbench.report import build

        return getattr(build, name)
    raise AttributeError(f"module 'ichbench.report' has no attribute {name!r}")
