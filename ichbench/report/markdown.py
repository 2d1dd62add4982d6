"""The report as Markdown, its figures as PNG files beside it: for a repository, a wiki
or a pull request, where a self-contained page cannot be shown."""

from __future__ import annotations

from html import escape
from pathlib import Path

from ichbench import __version__
from ichbench.report.page import RunReport, Section, caption, heading, summary, title
from ichbench.views import TableData
from ichbench.views.metrics import status_note


def _md_text(text: object) -> str:
    """Text from the store (a dataset's name, a note) with its HTML escaped: Markdown
    renderers pass raw HTML through, so a name like `<img onerror=...>` would run."""
    return escape(str(text), quote=False)


def _md_cell(text: str) -> str:
    """A cell's text, its HTML, `|` and `*` (a footnote mark, not emphasis) escaped."""
    return _md_text(text).replace("|", "\\|").replace("*", "\\*").replace("\n", " ")


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
    parts = [f"{level} {_md_text(heading(s))}", ""]
    parts += [f"> **Note:** {_md_text(n)}\n" for n in s.notes]
    if s.table is not None:
        parts += [table_md(s.table), ""]
    if s.figure is not None:
        parts += [
            f"![{_md_text(s.figure.title)}]({s.figure.filename})",
            "",
            f"_{_md_text(caption(s))}_",
            "",
        ]
    return "\n".join(parts)


def render_markdown(
    reports: list[RunReport], compare: list[Section], generated: str, db: Path
) -> str:
    lines = [f"# {_md_text(title(reports))}", ""]
    for r in reports:
        status = r.data.status if r.data.finished else f"**{r.data.status.upper()} — not finished**"
        lines.append(f"- `{r.data.run_id}` ({status}): {_md_text(summary(r.data))}")
    lines += ["", f"Generated {generated} by ichbench {__version__} from `{db}`.", ""]
    for r in reports:
        if not r.data.finished:
            lines += [f"> **Warning:** {_md_text(status_note(r.data))}", ""]
    lines += [_section_md(c) for c in compare]
    for r in reports:
        level = "##"
        if len(reports) > 1:
            lines += [f"## Run {r.data.run_id}", ""]
            level = "###"
        lines += [_section_md(s, level) for s in r.sections]
    return "\n".join(lines).rstrip() + "\n"
