"""Markdown tables: the one writer of every table a user reads (summary.md, compare, evaluate,
the benchmarks' reports)."""

from __future__ import annotations

import math
from typing import Iterable, Sequence


def table(head: Sequence[str], rows: Iterable[Sequence[object]], align: str | None = None) -> list[str]:
    """A markdown table's lines: the header, its rule, one line per row.

    Args:
        head: the column names.
        rows: the cells, any values (written with str()).
        align: one letter per column, "l" (left, the default) or "r" (right).

    Returns:
        The lines, without line ends.

    >>> table(["a", "b"], [[1, 2]], align="lr")
    ['| a | b |', '|---|---:|', '| 1 | 2 |']
    """
    align = align or "l" * len(head)
    rule = ["---:" if a == "r" else "---" for a in align]
    return [
        "| " + " | ".join(head) + " |",
        "|" + "|".join(rule) + "|",
        *("| " + " | ".join(str(c) for c in r) + " |" for r in rows),
    ]


def cell(v, signed: bool = False) -> str:
    """A metric in a table: three decimals (with its sign for a difference), "–" where there is none.

    >>> cell(0.5), cell(-0.25, signed=True), cell(float("nan")), cell(None)
    ('0.500', '-0.250', '–', '–')
    """
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return f"{v:+.3f}" if signed else f"{v:.3f}"


def interval(ci) -> str:
    """A 95 % interval in a table: "0.512–0.604", "–" where there is none.

    >>> interval((0.5123, 0.6041)), interval(None)
    ('0.512–0.604', '–')
    """
    if not ci:
        return "–"
    return f"{ci[0]:.3f}–{ci[1]:.3f}"
