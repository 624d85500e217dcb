"""A titled table of records, the unit every rendering of a report (markdown, rich, HTML) is
made of; records give their `COLUMNS`, `cells()` and, optionally, a `detail` per row."""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text

STYLES = {"ok": "green", "yes": "green", "failed": "red", "NO": "red", "skipped": "dim",
          "error": "red", "warning": "yellow"}


@dataclass
class Section:
    """A titled table of records; every rendering of the report is made of these."""

    title: str
    columns: tuple[str, ...]
    rows: list[tuple[str, ...]]
    note: str | None = None  # a sentence under the title
    details: list[str | None] = field(default_factory=list)  # raw text per row, HTML folds it
    # (caption, path relative to report.md) of images under the table
    pictures: list[tuple[str, str]] = field(default_factory=list)
    detail_label: str = "torch says"  # what HTML's fold of a row's detail is called

    @classmethod
    def of(cls, title: str, records: Sequence[Any], note: str | None = None,
           pictures: list[tuple[str, str]] | None = None) -> Section:
        kind = type(records[0]) if records else None
        return cls(title, kind.COLUMNS if kind else (), [record.cells() for record in records],
                   note, [getattr(record, "detail", None) for record in records], pictures or [],
                   getattr(kind, "DETAIL_LABEL", "torch says"))

    def _pictures_line(self) -> str:
        folders = sorted({str(Path(path).parent) for _, path in self.pictures})
        return ("Pictures of the first validation sample, one per row: "
                + ", ".join(folder + "/" for folder in folders))

    def to_markdown(self) -> list[str]:
        lines = [f"## {self.title}", ""]
        if self.note:
            lines += [self.note, ""]
        if self.rows:
            lines += ["| " + " | ".join(self.columns) + " |",
                      "|" + "---|" * len(self.columns)]
            lines += ["| " + " | ".join(_md_cell(cell) for cell in row) + " |"
                      for row in self.rows]
            lines.append("")
        for caption, path in self.pictures:
            lines += [f"**{caption}**", "", f"![{caption}]({path})", ""]
        return lines

    def __rich__(self) -> Table | Text | Group:
        if self.pictures:
            return Group(Section(self.title, self.columns, self.rows, self.note, self.details),
                         Text(self._pictures_line()))
        if not self.rows:
            return Text(f"{self.title}: {self.note or 'none'}",
                        style="green" if self.title == "Hazards" else "")
        table = Table(title=self.title + (f": {self.note}" if self.note else ""),
                      title_justify="left")
        for column in self.columns:
            table.add_column(column)
        for row in self.rows:
            table.add_row(*(Text(_first_line(cell), style=STYLES.get(cell.split(" ")[0], ""))
                            for cell in row))
        return table

    def _repr_html_(self) -> str:
        head = f"<h4>{html.escape(self.title)}</h4>"
        if self.note:
            head += f"<p>{html.escape(self.note)}</p>"
        if self.pictures:
            head += f"<p>{html.escape(self._pictures_line())}</p>"
        if not self.rows:
            return head
        header = "".join(f"<th>{html.escape(c)}</th>" for c in self.columns)
        details = self.details or [None] * len(self.rows)
        body = "".join(
            "<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in row[:-1])
            + f"<td>{html.escape(row[-1])}"
            + (f"<details><summary>{html.escape(self.detail_label)}</summary>"
               f"<pre>{html.escape(detail)}</pre></details>" if detail else "") + "</td></tr>"
            for row, detail in zip(self.rows, details, strict=True))
        return f"{head}<table><tr>{header}</tr>{body}</table>"


def _first_line(cell: str) -> str:
    first = cell.splitlines()[0] if cell else ""
    return first[:160] + ("…" if len(first) > 160 or "\n" in cell else "")


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", "<br>")
