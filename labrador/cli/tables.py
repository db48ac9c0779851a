"""Tables that fit the terminal: one line per item at any width, `--json` for everything.

Rich wraps a cell that does not fit into a column of fragments ("The / API / serv…"). Here every
cell stays on one line: free text (titles, images) is truncated with an ellipsis down to a minimum
width, and when that is not enough the least important columns are left out, named in a caption.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from rich.console import Console
from rich.table import Table
from rich.text import Text


@dataclass(frozen=True)
class Col:
    header: str
    drop: int = 0  # 0: always shown; otherwise left out when too narrow, highest number first
    shrink: bool = False  # free text: may be cut with an ellipsis down to `min_width`
    min_width: int = 12
    keep_end: bool = False  # cut from the start ("…k8s-node:v1.31.4-r3"): image references differ at their end


def _overhead(count: int) -> int:
    # Rich's default box: a border before each column and after the last, one space of padding each side.
    return 3 * count + 1


def _cell_width(text: str) -> int:
    return Text(text).cell_len


def _fit(columns: Sequence[Col], rows: Sequence[Sequence[str]], width: int) -> tuple[list[int], dict[int, int]]:
    """The indexes of the columns shown and the width of each one that must be cut."""
    natural = [
        max([_cell_width(col.header), *(_cell_width(row[i]) for row in rows)]) for i, col in enumerate(columns)
    ]
    shown = list(range(len(columns)))
    while True:
        room = width - _overhead(len(shown))
        floor = {i: min(natural[i], max(columns[i].min_width, _cell_width(columns[i].header)))
                 for i in shown if columns[i].shrink}
        least = sum(floor.get(i, natural[i]) for i in shown)
        droppable = [i for i in shown if columns[i].drop]
        if least <= room or not droppable:
            break
        shown.remove(max(droppable, key=lambda i: (columns[i].drop, i)))
    widths = {i: natural[i] for i in shown}
    excess = sum(widths.values()) - room
    cut: dict[int, int] = {}
    while excess > 0:
        # Cut the widest free-text column first, one character at a time (water-filling).
        candidates = [i for i in floor if widths[i] > floor[i]]
        if not candidates:
            break
        widest = max(candidates, key=lambda i: (widths[i], -i))
        widths[widest] -= 1
        cut[widest] = widths[widest]
        excess -= 1
    if excess > 0:  # nothing left to drop or cut: share the cut between all columns (rich adds ellipses)
        for i in shown:
            cut[i] = max(1, widths[i] - (excess * widths[i]) // max(1, sum(widths.values())) - 1)
    return shown, cut


def fitted_table(
    columns: Sequence[Col], rows: Sequence[Sequence[str]], *, width: int, title: str | None = None
) -> Table:
    shown, cut = _fit(columns, rows, width)
    hidden = [columns[i].header for i in range(len(columns)) if i not in shown]
    caption = f"hidden at this width: {', '.join(hidden)} (see --json)" if hidden else None
    table = Table(title=title, caption=caption)
    for i in shown:
        table.add_column(columns[i].header, no_wrap=True, overflow="ellipsis", max_width=cut.get(i))
    for row in rows:
        table.add_row(*(Text(_cut_start(row[i], cut[i]) if columns[i].keep_end and i in cut else row[i])
                        for i in shown))  # Text: a '[' in a title is not rich markup
    return table


def _cut_start(text: str, width: int) -> str:
    if _cell_width(text) <= width:
        return text
    tail = text
    while tail and _cell_width("…" + tail) > width:
        tail = tail[1:]
    return "…" + tail


def print_table(
    console: Console, columns: Sequence[Col], rows: Sequence[Sequence[str]], *, title: str | None = None
) -> None:
    console.print(fitted_table(columns, rows, width=console.width, title=title))
