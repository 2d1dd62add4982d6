"""The table view-model: rows of already formatted cells, and how they are worded."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Row:
    """One table row. `group` rows are headings that span the table (e.g. the literature
    block); `strong` rows are the ones a reader should look at first (the vote); `muted`
    rows are context (the literature, a fold that was not recorded)."""

    cells: list[str]
    strong: bool = False
    muted: bool = False
    group: bool = False


@dataclass
class TableData:
    """A table as every renderer sees it. A page has room for the long `title`, column
    names and `caption`; a terminal uses `short_title` and `short_columns` where given,
    and shows `note` (a one-line warning) under the table."""

    id: str
    title: str
    columns: list[str]
    rows: list[Row] = field(default_factory=list)
    caption: str = ""
    numeric_from: int = 1  # columns from this index on are right-aligned numbers
    short_title: str = ""
    short_columns: list[str] | None = None
    note: str = ""
    status_column: int | None = None  # a column of run statuses (a terminal colours it)

    @property
    def key_value(self) -> bool:
        """Two unnamed columns: a list of fields and their values."""
        return self.columns == ["", ""]

    def headers(self, short: bool = False) -> list[str]:
        return list(self.short_columns or self.columns) if short else list(self.columns)


@dataclass(frozen=True)
class Wording:
    """How models are named in the first column: a page spells them out like the paper's
    tables, a terminal keeps the short names its users script against."""

    fold: str = "Fold {fold}"
    vote: str = "Voting"
    paper_fold: str = "Fold {fold}"
    paper_vote: str = "Voting"
    pooled: str = "Voting, pooled over outer folds"
    outer: str = "Voting, outer fold {outer}"
    spread: str = "Outer folds, mean ± sd"


PAGE = Wording()
TERMINAL = Wording(
    fold="fold {fold}",
    vote="vote",
    paper_fold="paper fold {fold}",
    paper_vote="paper vote",
    pooled="pooled",
    outer="outer fold {outer}",
    spread="mean ± sd",
)
