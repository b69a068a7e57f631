"""--after/--before parsing: partial dates name the start of their period, as local wall time."""

from __future__ import annotations

import re
from datetime import datetime

from search.errors import DateError

_NUMERIC = re.compile(
    r"^(?P<y>\d{4})(?:[-./](?P<m>\d{1,2})(?:[-./](?P<d>\d{1,2})\.?"
    r"(?:[ T](?P<H>\d{1,2}):(?P<M>\d{2})(?::(?P<S>\d{2}))?)?)?)?$"
)
# `2023년 5월 1일`, `2023년 5월`, `2023년`: how dates are written in Korean.
_KOREAN = re.compile(r"^(?P<y>\d{4})\s*년(?:\s*(?P<m>\d{1,2})\s*월(?:\s*(?P<d>\d{1,2})\s*일)?)?$")

FORMATS_HELP = "YYYY, YYYY-MM, YYYY-MM-DD, 'YYYY-MM-DD HH:MM' or 2023년 5월 1일"


def parse_date(value: str) -> datetime:
    """Parse a date given on the command line; `2023-05` means 2023-05-01 00:00 local time.

    EXIF DateTimeOriginal has no time zone, so filters compare naive local wall times.
    """
    text = value.strip()
    match = _NUMERIC.match(text) or _KOREAN.match(text)
    if not match:
        raise DateError(f"malformed date {value!r}: use {FORMATS_HELP}")
    parts = {k: int(v) for k, v in match.groupdict().items() if v is not None}
    try:
        return datetime(
            parts["y"],
            parts.get("m", 1),
            parts.get("d", 1),
            parts.get("H", 0),
            parts.get("M", 0),
            parts.get("S", 0),
        )
    except ValueError as exc:
        raise DateError(f"malformed date {value!r}: {exc}") from None


def parse_range(
    after: str | datetime | None, before: str | datetime | None
) -> tuple[datetime | None, datetime | None]:
    """Parse both bounds (after inclusive, before exclusive) and check they leave a non-empty range."""
    lo = parse_date(after) if isinstance(after, str) else after
    hi = parse_date(before) if isinstance(before, str) else before
    if lo is not None and hi is not None and lo >= hi:
        raise DateError(
            f"the date range is empty: its start {lo:%Y-%m-%d %H:%M} is not earlier than "
            f"its end {hi:%Y-%m-%d %H:%M}"
        )
    return lo, hi
