"""The report as one self-contained HTML page: images inline as base64 PNG and the
style sheet inline, so it opens offline in any browser and can be mailed as one file."""

from __future__ import annotations

import base64
import html
import re
from functools import cache
from importlib.resources import files
from pathlib import Path
from typing import Any

from ichbench import __version__
from ichbench.report.page import RunReport, Section, caption, heading, summary, title
from ichbench.views import TableData
from ichbench.views.metrics import status_note

FOOTER = (
    "<footer>Reproduces the protocol of Hoseyni et al., “Comprehensive "
    "Hyperparameter Tuning to Enhance Deep Learning Performance for Intracranial "
    "Hemorrhage Classification in Head CT Scans”. Every number above was computed by "
    "the run and read back from the store; literature rows are as published. "
    "CIs: 95%.</footer>"
)
_WITH_CI = re.compile(r"^(\S+) \[(.+)\](\*?)$")  # `*`: a zero-width interval, footnoted


@cache
def css() -> str:
    """The page's style sheet, shipped beside this module."""
    return files("ichbench.report").joinpath("report.css").read_text(encoding="utf-8")


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def table_html(t: TableData) -> str:
    kv = t.key_value
    parts = [f'<div class="tablewrap"><table class="{"kv" if kv else "metrics"}">']
    if not kv:
        parts.append(f"<caption>{_e(t.title)}</caption>")
        parts.append(
            "<thead><tr>"
            + "".join(
                f'<th class="{"num" if i >= t.numeric_from else ""}">{_e(c)}</th>'
                for i, c in enumerate(t.columns)
            )
            + "</tr></thead>"
        )
    parts.append("<tbody>")
    for row in t.rows:
        if row.group:
            parts.append(
                f'<tr class="group"><td colspan="{len(t.columns)}">{_e(row.cells[0])}</td></tr>'
            )
            continue
        cls = " ".join(c for c, on in (("strong", row.strong), ("muted", row.muted)) if on)
        cells = "".join(
            f'<td class="{"num" if i >= t.numeric_from else ""}">{_cell_html(c)}</td>'
            for i, c in enumerate(row.cells)
        )
        parts.append(f'<tr class="{cls}">{cells}</tr>')
    parts.append("</tbody></table></div>")
    if t.caption:
        parts.append(f'<p class="tcaption">{_e(t.caption)}</p>')
    return "".join(parts)


def _cell_html(text: str) -> str:
    """A value with its interval (`0.91 [0.85–0.95]`) shows the interval small under
    the value, which keeps wide tables narrow enough for a slide."""
    match = _WITH_CI.match(text)
    if not match:
        return _e(text)
    value, interval, mark = match.groups()
    return f'{_e(value)}<span class="ci">[{_e(interval)}]{_e(mark)}</span>'


def _section_html(s: Section) -> str:
    parts = [f'<section id="{_e(s.id)}"><h2>{_e(heading(s))}</h2>']
    parts += [f'<div class="note">{_e(n)}</div>' for n in s.notes]
    if s.table is not None:
        parts.append(table_html(s.table))
    if s.figure is not None:
        data = base64.b64encode(s.figure.png).decode("ascii")
        width = int(round(s.figure.width_in * 96))
        parts.append(
            f'<figure><img alt="{_e(s.figure.title)}" '
            f'style="width: min(100%, {width}px)" '
            f'src="data:image/png;base64,{data}">'
            f"<figcaption>{_e(caption(s))}</figcaption></figure>"
        )
    parts.append("</section>")
    return "\n".join(parts)


def _badge(status: str) -> str:
    label = status if status == "finished" else f"{status.upper()} — not finished"
    return f'<span class="badge {_e(status)}">{_e(label)}</span>'


def render_html(reports: list[RunReport], compare: list[Section], generated: str, db: Path) -> str:
    page_title = title(reports)
    several = len(reports) > 1
    head = [
        f"<header><h1>{_e(page_title)}"
        + ("" if several else _badge(reports[0].data.status))
        + "</h1>"
    ]
    for r in reports:
        prefix = f"{r.data.run_id}: " if several else ""
        head.append(
            f'<p class="sub">{_e(prefix + summary(r.data))}'
            + (_badge(r.data.status) if several else "")
            + "</p>"
        )
    head.append(
        f'<p class="sub">Generated {_e(generated)} by ichbench {_e(__version__)} from '
        f"{_e(db)}</p></header>"
    )
    banners = [
        f'<div class="banner">{_e(status_note(r.data))}</div>'
        for r in reports
        if not r.data.finished
    ]
    toc = ["<nav><strong>Contents</strong><ol>"]
    for c in compare:
        toc.append(f'<li><a href="#{_e(c.id)}">{_e(heading(c))}</a></li>')
    for r in reports:
        for s in r.sections:
            label = f"{r.data.run_id}: {heading(s)}" if several else heading(s)
            toc.append(f'<li><a href="#{_e(s.id)}">{_e(label)}</a></li>')
    toc.append("</ol></nav>")
    body = []
    body += [_section_html(c) for c in compare]
    for r in reports:
        if several:
            body.append(
                f'<div class="run"><h2 class="runhead">Run {_e(r.data.run_id)}'
                f"{_badge(r.data.status)}</h2>"
            )
        body += [_section_html(s) for s in r.sections]
        if several:
            body.append("</div>")
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(page_title)}</title><style>\n{css()}</style></head><body><main>\n"
        + "\n".join(head + banners + toc + body)
        + f"\n{FOOTER}</main></body></html>\n"
    )
