"""Time columns that hold ISO 8601 dates: parsing, the step between rows, and labels for new steps.

A date column (``2004``, ``2004-12``, ``2004-12-31``, ``2004-12-31T06:00``, ``...T06:00:00``; a
space may replace the ``T``) becomes a :class:`Calendar` and the row's step number from the first
date (0, 1, 2, ...). The step is a whole number of calendar months (monthly, quarterly, yearly) or
a fixed length of time (hours, days, weeks). A repeated date, a missing one and an irregular
spacing are errors naming the file lines, because a model that counts steps would silently
misplace every later row.
"""

from __future__ import annotations

import calendar
import re
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any

from ..errors import PyrotrainError

# (pattern, strptime format, how a user writes it), most specific last.
_FORMATS = [
    (re.compile(r"^\d{4}$"), "%Y", "YYYY"),
    (re.compile(r"^\d{4}-\d{2}$"), "%Y-%m", "YYYY-MM"),
    (re.compile(r"^\d{4}-\d{2}-\d{2}$"), "%Y-%m-%d", "YYYY-MM-DD"),
    (re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}$"), "%Y-%m-%dT%H:%M", "YYYY-MM-DDTHH:MM"),
    (re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}$"), "%Y-%m-%d %H:%M", "YYYY-MM-DD HH:MM"),
    (re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}$"), "%Y-%m-%dT%H:%M:%S", "ISO date-time"),
    (re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}$"), "%Y-%m-%d %H:%M:%S", "ISO date-time"),
]

# Season lengths a step implies: monthly data repeats yearly, daily data weekly, ...
_MONTH_PERIODS = {1: 12, 3: 4, 12: 0}
_SECOND_PERIODS = {3600: 24, 86400: 7, 7 * 86400: 52}


def date_format(cell: str) -> tuple[str, str] | None:
    """The strptime format and its spelling for an ISO date ``cell``, or None if it is not one."""
    for pattern, fmt, spelled in _FORMATS:
        if pattern.match(cell.strip()):
            return fmt, spelled
    return None


def _months(d: datetime) -> int:
    return d.year * 12 + d.month - 1


@dataclass(frozen=True)
class Calendar:
    """Where step 0 is, how long a step is, and how the input wrote its dates."""

    fmt: str  # strptime/strftime format of the input's dates
    start: str  # the first date, ISO
    months: int  # the step in calendar months; 0: a fixed step of ``seconds``
    seconds: float

    @property
    def period(self) -> int | None:
        """The season length in steps this spacing implies, or None when there is no usual one."""
        if self.months:
            return _MONTH_PERIODS.get(self.months)
        return _SECOND_PERIODS.get(int(self.seconds)) if self.seconds.is_integer() else None

    @property
    def spacing(self) -> str:
        names = {1: "monthly", 3: "quarterly", 12: "yearly"}
        if self.months:
            return names.get(self.months, f"every {self.months} months")
        named = {3600: "hourly", 86400: "daily", 7 * 86400: "weekly"}
        return named.get(int(self.seconds), f"every {timedelta(seconds=self.seconds)}")

    def at(self, step: int) -> datetime:
        """The date of step ``step`` (any integer; later steps continue the spacing)."""
        first = datetime.fromisoformat(self.start)
        if not self.months:
            return first + timedelta(seconds=self.seconds * step)
        year, month = divmod(_months(first) + self.months * step, 12)
        day = min(first.day, calendar.monthrange(year, month + 1)[1])
        return first.replace(year=year, month=month + 1, day=day)

    def label(self, step: int) -> str:
        """Step ``step`` written as the input wrote its dates."""
        d = self.at(step)
        if self.fmt == "%Y":
            return f"{d.year:04d}"
        return f"{d.year:04d}" + d.strftime(self.fmt[2:])

    def to_info(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_info(cls, info: dict[str, Any] | None) -> Calendar | None:
        return cls(**info) if info else None


def parse_dates(
    cells: list[str], lines: list[int], column: str, file: str, key: str = "data.time"
) -> tuple[list[int], Calendar] | None:
    """Step numbers of the rows (in the input's order) and their calendar, when the first cell is
    an ISO date; None when it is not (the column is then read as numbers).

    Every cell must be a date written like the first one; the dates, in order, must be evenly
    spaced with none repeated or missing. Errors name the file lines.
    """
    found = date_format(cells[0])
    if found is None:
        return None
    fmt, spelled = found
    dates = []
    for cell, line in zip(cells, lines, strict=True):
        try:
            if date_format(cell) != found:
                raise ValueError
            dates.append(datetime.strptime(cell.strip(), fmt))
        except ValueError:
            what = "an empty cell" if not cell.strip() else repr(cell)
            raise PyrotrainError(
                f"column '{column}' of {file} has {what} on line {line}, which is not a date "
                f"written {spelled} like the first row's {cells[0].strip()!r}",
                key=key,
                value=column,
                hint="Write every date the same way (ISO 8601: 2004, 2004-12, 2004-12-31, "
                "2004-12-31T06:00)",
            ) from None
    order = sorted(range(len(dates)), key=dates.__getitem__)
    for a, b in zip(order, order[1:], strict=False):
        if dates[a] == dates[b]:
            raise PyrotrainError(
                f"line {lines[b]} of {file} repeats the date {cells[b].strip()} of line "
                f"{lines[a]} (column '{column}')",
                key=key,
                value=column,
                hint="Each time step must appear once: drop or merge the repeated row",
            )
    cal = _spacing(dates, order, fmt)
    steps = [0] * len(dates)
    first = dates[order[0]]
    for i, d in enumerate(dates):
        if cal.months:
            steps[i] = (_months(d) - _months(first)) // cal.months
        else:
            steps[i] = round((d - first).total_seconds() / cal.seconds)
    for a, b in zip(order, order[1:], strict=False):
        if steps[b] - steps[a] != 1 or cal.at(steps[b]) != dates[b]:
            missing = steps[b] - steps[a] - 1
            what = (
                f"{missing} {cal.spacing} step{'s are' if missing > 1 else ' is'} missing"
                if missing >= 1 and cal.at(steps[b]) == dates[b]
                else f"the spacing is not {cal.spacing}"
            )
            raise PyrotrainError(
                f"column '{column}' of {file} jumps from {cells[a].strip()} (line {lines[a]}) to "
                f"{cells[b].strip()} (line {lines[b]}): {what}",
                key=key,
                value=column,
                hint="A time series needs one row per step: add the missing rows (a model cannot "
                "use an empty cell either), or use a numeric time column",
            )
    return steps, cal


def _spacing(dates: list[datetime], order: list[int], fmt: str) -> Calendar:
    """The step: whole calendar months when every date falls on the same day of the month and
    time of day (monthly, quarterly, yearly data written with days), else the smallest gap as a
    fixed length of time when every gap is a multiple of it (hours, days, weeks), else months
    (month ends: 01-31, 02-29, 03-31)."""
    start = dates[order[0]].isoformat()
    pairs = list(zip(order, order[1:], strict=False))
    same_day = len({(d.day, d.time()) for d in dates}) == 1
    if "%d" in fmt and pairs and not same_day:
        gaps = [(dates[b] - dates[a]).total_seconds() for a, b in pairs]
        smallest = min(gaps)
        if all(g % smallest == 0 for g in gaps):
            return Calendar(fmt, start, 0, smallest)
    month_gaps = [_months(dates[b]) - _months(dates[a]) for a, b in pairs]
    return Calendar(fmt, start, max(1, min(month_gaps, default=12 if fmt == "%Y" else 1)), 0.0)
