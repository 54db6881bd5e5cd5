"""The per-cell facts the event stream holds that no other stage keeps: when each cell started
and ended (its marks), which processes ran programs in it, and which names it bound.

`CellWatch.watch` rides derive's one pass over the stream (like apt.RunObserver); the cells
stage (cells.py) joins these with the resolution, the roles and the data draft.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from ..events import Bind, CellMark, Event, Exec


@dataclass
class CellWatch:
    """What the stream says per notebook cell index (events carry `cell` once assigned)."""

    #: cell -> [first start, last end] (wall-clock seconds) from the kernel's marks.
    marks: dict[int, list[float | None]] = field(default_factory=dict)
    #: cells in the order the kernel started them (a cell run twice appears twice).
    order: list[int] = field(default_factory=list)
    #: cell -> the pids that executed a program while it ran.
    execs: dict[int, set[int]] = field(default_factory=dict)
    #: cell -> the names it bound or rebound (the kernel side's `names` records).
    bound: dict[int, set[str]] = field(default_factory=dict)

    def watch(self, events: Iterable[Event]) -> Iterator[Event]:
        for event in events:
            cell = event.cell
            if cell is not None:
                if isinstance(event, CellMark):
                    self._mark(event, cell)
                elif isinstance(event, Exec):
                    self.execs.setdefault(cell, set()).add(event.pid)
                elif isinstance(event, Bind):
                    self.bound.setdefault(cell, set()).update(event.names)
            yield event

    def _mark(self, event: CellMark, cell: int) -> None:
        # Only the kernel runs cells, so every mark is the kernel's (no pid check needed).
        span = self.marks.setdefault(cell, [None, None])
        if event.phase == "start":
            if span[0] is None:
                span[0] = event.t
            self.order.append(cell)
        else:
            span[1] = event.t
