"""The report as Markdown, its figures as PNG files beside it: for a repository, a wiki
or a pull request, where a self-contained page cannot be shown."""

from __future__ import annotations

from pathlib import Path

from ichbench import __version__
from ichbench.report.page import RunReport, Section, caption, heading, summary, title
from ichbench.views import TableData
from ichbench.views.metrics import status_note


def _md_cell(text: str) -> str:
    """A cell's text, its `|` and `*` (a footnote mark, not emphasis) escaped."""
    return str(text).replace("|", "\\|").replace("*", "\\*").replace("\n", " ")


def table_md(t: TableData) -> str:
    kv = t.key_value
    columns = ["Field", "Value"] if kv else t.columns
    lines = [] if kv else [f"**{_md_cell(t.title)}**", ""]
    lines.append("| " + " | ".join(_md_cell(c) for c in columns) + " |")
    lines.append(
        "|" + "|".join("---:" if i >= t.numeric_from else "---" for i in range(len(columns))) + "|"
    )
    for row in t.rows:
        if row.group:
            cells = [f"*{_md_cell(row.cells[0])}*"] + [""] * (len(columns) - 1)
        else:
            cells = [_md_cell(c) for c in row.cells]
            if row.strong:
                cells = [f"**{c}**" if c else c for c in cells]
        lines.append("| " + " | ".join(cells) + " |")
    if t.caption:
        lines += ["", f"_{_md_cell(t.caption)}_"]
    return "\n".join(lines)


def _section_md(s: Section, level: str = "##") -> str:
    parts = [f"{level} {heading(s)}", ""]
    parts += [f"> **Note:** {n}\n" for n in s.notes]
    if s.table is not None:
        parts += [table_md(s.table), ""]
    if s.figure is not None:
        parts += [f"![{s.figure.title}]({s.figure.filename})", "", f"_{caption(s)}_", ""]
    return "\n".join(parts)


def render_markdown(
    reports: list[RunReport], compare: list[Section], generated: str, db: Path
) -> str:
    lines = [f"# {title(reports)}", ""]
    for r in reports:
        status = r.data.status if r.data.finished else f"**{r.data.status.upper()} — not finished**"
        lines.append(f"- `{r.data.run_id}` ({status}): {summary(r.data)}")
    lines += ["", f"Generated {generated} by ichbench {__version__} from `{db}`.", ""]
    for r in reports:
        if not r.data.finished:
            lines += [f"> **Warning:** {status_note(r.data)}", ""]
    lines += [_section_md(c) for c in compare]
    for r in reports:
        level = "##"
        if len(reports) > 1:
            lines += [f"## Run {r.data.run_id}", ""]
            level = "###"
        lines += [_section_md(s, level) for s in r.sections]
    return "\n".join(lines).rstrip() + "\n"
