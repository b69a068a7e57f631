"""Dates in plain words, Korean and simple English, relative to `today`, as inclusive day ranges.

A date phrase is one or more whole words that read entirely as date pieces (atoms): a year
(2024년, 24년, 2024, 작년, 올해, 3년 전), a month (5월, March, 지난달), a season, a holiday,
a day (5일), a part of a month (초, 중순, 말), a relative day or week (어제, 지난 주말), and
the bounds 부터/까지/이후/이전 (since/until/before/after, from … to …). A word with anything
else in it (봄꽃, 설악산) is not a date. The pieces then must fit one shape (`_resolve`); a
phrase that reads as date pieces but names no day that exists (13월, 2월 30일, 작년 32일)
raises DateError.

Rules (documented for users in the README's "Asking in Korean"):
- Seasons as Korea counts them: 봄 3–5월, 여름 6–8월, 가을 9–11월, 겨울 12–2월; the winter of a
  year is the one that *began* that year (2025년 겨울, 작년 겨울 in 2026: 2025-12-01–2026-02-28).
- Photos are in the past: a month, season, holiday or day named without a year is the most
  recent one that has begun (today's month counts); with 지난/last, the most recent one that
  has ended; with 이번/this, this year's.
- 지난주 / 이번 주: Monday to Sunday; 지난 주말: the last Saturday–Sunday that has ended.
- 최근 일주일 / 최근 3일 / 지난 3일간 / past 3 days: the last days up to today, today included
  (최근 한 달: from the day after the same day a month ago).
- 설날 and 추석: the day with the day before and after (lunar table, 1900–2050); 크리스마스:
  12-25 (이브: 12-24); 어린이날: 05-05; 신정 / 새해 / new year: 01-01.
- 초 / 초순: days 1–10, 중순: 11–20, 말 / 하순: 21–end; early/mid/late the same.
- 24년: 2024 (a two-digit year is 20xx unless that is after this year, then 19xx).
- X부터 / X 이후 / since X: from X's first day; X까지 / X 이전 / until X: to X's last day;
  before X: to the day before X; after X: from the day after X; "from X to Y" is a range, a
  lone "from X" is X itself (photos from 2023).
"""

from __future__ import annotations

import calendar
import re
from dataclasses import dataclass
from datetime import date, timedelta

from search.errors import DateError
from search.understand import lunar


@dataclass(frozen=True)
class DateFact:
    """What a date phrase says: an inclusive range, either bound open."""

    after: date | None
    before: date | None

    def label(self) -> str:
        """2025-06-01–2025-08-31, 2025-12-25, 2023-01-01– or –2024-12-31."""
        if self.after is not None and self.after == self.before:
            return self.after.isoformat()
        lo = self.after.isoformat() if self.after else ""
        hi = self.before.isoformat() if self.before else ""
        return f"{lo}–{hi}"


class NotADate(Exception):
    """The words read as date pieces but fit no date shape (e.g. 말 alone): they stay text."""


_NUMBERS = {
    "한": 1, "두": 2, "세": 3, "네": 4, "다섯": 5, "여섯": 6, "일곱": 7, "여덟": 8, "아홉": 9,
    "열": 10, "a": 1, "an": 1, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6,
    "seven": 7, "eight": 8, "nine": 9, "ten": 10,
}  # fmt: skip
_MONTHS = {
    "january": 1, "jan": 1, "february": 2, "feb": 2, "march": 3, "mar": 3, "april": 4, "apr": 4,
    "may": 5, "june": 6, "jun": 6, "july": 7, "jul": 7, "august": 8, "aug": 8, "september": 9,
    "sept": 9, "sep": 9, "october": 10, "oct": 10, "november": 11, "nov": 11, "december": 12,
    "dec": 12,
}  # fmt: skip
_SEASONS = {
    "봄": 3, "여름": 6, "가을": 9, "겨울": 12, "spring": 3, "summer": 6, "autumn": 9, "fall": 9,
    "winter": 12,
}  # fmt: skip
_YEAR_WORDS = {
    "재재작년": -3, "재작년": -2, "작년": -1, "지난해": -1, "지난 해": -1, "last year": -1,
    "올해": 0, "금년": 0, "올": 0, "this year": 0,
}  # fmt: skip
_HOLIDAYS = {
    "설날": "seollal", "설 연휴": "seollal", "설연휴": "seollal", "구정": "seollal", "설": "seollal",
    "seollal": "seollal", "lunar new year": "seollal", "추석 연휴": "chuseok",
    "추석연휴": "chuseok", "추석": "chuseok", "한가위": "chuseok", "chuseok": "chuseok",
    "크리스마스 이브": "eve", "크리스마스이브": "eve", "christmas eve": "eve",
    "크리스마스": "christmas", "성탄절": "christmas", "성탄": "christmas", "christmas": "christmas",
    "xmas": "christmas", "어린이날": "children", "신정": "newyear", "새해 첫날": "newyear", "새해": "newyear",
    "new year's day": "newyear", "new year": "newyear", "new years": "newyear",
}  # fmt: skip
_RELATIVE = {
    "오늘": "today", "today": "today", "어제": "yesterday", "yesterday": "yesterday",
    "그저께": "2days", "그제": "2days", "엊그제": "2days", "지난 주말": "lastweekend",
    "지난주말": "lastweekend", "저번 주말": "lastweekend", "저번주말": "lastweekend",
    "last weekend": "lastweekend", "이번 주말": "weekend", "이번주말": "weekend",
    "this weekend": "weekend", "지난주": "lastweek", "지난 주": "lastweek", "저번 주": "lastweek",
    "저번주": "lastweek", "last week": "lastweek", "이번 주": "week", "이번주": "week",
    "this week": "week", "지난달": "lastmonth", "지난 달": "lastmonth", "저번 달": "lastmonth",
    "저번달": "lastmonth", "last month": "lastmonth", "이번 달": "month", "이번달": "month",
    "this month": "month",
}  # fmt: skip
_PARTS = {
    "초순": (1, 10), "상순": (1, 10), "초": (1, 10), "early": (1, 10), "중순": (11, 20),
    "mid": (11, 20), "하순": (21, 31), "말": (21, 31), "late": (21, 31), "중": (1, 31),
}  # fmt: skip
_MODIFIERS = {"지난": "last", "저번": "last", "last": "last", "past": "last", "이번": "this",
              "this": "this"}  # fmt: skip
# Bounds: Korean ones follow their date, English ones precede it.
_AFTER_BOUNDS = {"부터": "from", "이후": "from", "since": "from", "from": "from", "after": "after"}
_BEFORE_BOUNDS = {"까지": "until", "이전": "until", "until": "until", "till": "until",
                  "to": "until", "before": "before"}  # fmt: skip


def _flat(table: dict) -> dict:
    return {k.replace(" ", "").lower(): v for k, v in table.items()}


def _alternation(words) -> str:
    # Longest first so 재작년 wins over 작년; spaces inside a phrase match one or none.
    ordered = sorted(words, key=len, reverse=True)
    return "|".join(re.escape(w).replace(r"\ ", r"\s?") for w in ordered)


_NUM_WORD = _alternation([w for w in _NUMBERS if not w.isascii()])
_EN_NUM = _alternation([w for w in _NUMBERS if w.isascii()])
_ATOM = re.compile(
    "|".join(
        [
            r"(?P<numdate>(?P<nd_y>\d{4})[-./](?P<nd_m>\d{1,2})(?:[-./](?P<nd_d>\d{1,2}))?\.?)",
            rf"(?P<ago>(?P<ago_n>\d{{1,4}}|{_NUM_WORD})\s?(?P<ago_u>년|해|달|개월|주일|주|일)\s?전)",
            r"(?P<week_ago>일주일\s?전)",
            r"(?P<days_ago>(?P<da_w>이틀|사흘|나흘)\s?전)",
            rf"(?P<eago>(?P<eago_n>\d{{1,4}}|{_EN_NUM})\s(?P<eago_u>years?|months?|weeks?|days?)\sago)",
            rf"(?P<holiday>{_alternation(_HOLIDAYS)})",
            rf"(?P<relative>{_alternation(_RELATIVE)})",
            rf"(?P<yearword>{_alternation(_YEAR_WORDS)})",
            # after `relative` and `yearword`: 지난 주 is last week, 지난 3주 the last 21 days
            rf"(?P<recent>(?P<rc_w>최근|지난|last|past)\s?(?P<rc_n>\d{{1,4}}|{_NUM_WORD}|{_EN_NUM})?"
            r"\s?(?P<rc_u>일주일|주일|주|일|달|개월|년|days?|weeks?|months?|years?)(?:\s?간|\s?동안)?"
            r"(?![가-힣A-Za-z]))",
            r"(?P<y4>(?:19|20)\d{2})(?:\s?년도?)?",
            r"(?P<y2>\d{2})\s?년도?",
            r"(?P<month>\d{1,3})\s?월",
            rf"(?P<emonth>{_alternation(_MONTHS)})",
            r"(?P<day>\d{1,4})\s?일",
            rf"(?P<season>{_alternation(_SEASONS)})",
            rf"(?P<part>{_alternation(_PARTS)})",
            rf"(?P<modifier>{_alternation(_MODIFIERS)})",
            rf"(?P<bound>{_alternation([*_AFTER_BOUNDS, *_BEFORE_BOUNDS])})",
        ]
    ),
    re.IGNORECASE,
)
_F_NUMBERS, _F_MONTHS, _F_SEASONS = _flat(_NUMBERS), _flat(_MONTHS), _flat(_SEASONS)
_F_YEARS, _F_HOLIDAYS, _F_RELATIVE = _flat(_YEAR_WORDS), _flat(_HOLIDAYS), _flat(_RELATIVE)
_F_PARTS, _F_MODIFIERS = _flat(_PARTS), _flat(_MODIFIERS)
_F_AFTER, _F_BEFORE = _flat(_AFTER_BOUNDS), _flat(_BEFORE_BOUNDS)
# An English atom must end at a word's end ("may" is not the start of "mayor").
_WORD_END = re.compile(r"(?![A-Za-z])")


def lex(phrase: str) -> list[tuple[str, re.Match[str]]] | None:
    """The atoms `phrase` consists of, or None when any part of it is not a date piece."""
    atoms: list[tuple[str, re.Match[str]]] = []
    pos, end = 0, len(phrase)
    while pos < end:
        if phrase[pos] == " ":
            pos += 1
            continue
        match = _ATOM.match(phrase, pos)
        if match is None or match.end() == pos:
            return None
        last = match.group(0)[-1:]
        if last.isascii() and last.isalpha() and not _WORD_END.match(phrase, match.end()):
            return None
        # The group that closed last is the atom's outer group (numdate, not nd_y).
        atoms.append((match.lastgroup or "", match))
        pos = match.end()
    return atoms


@dataclass
class _Segment:
    bound: str | None = None
    bound_word: str | None = None
    year: int | None = None
    year_word: str | None = None
    modifier: str | None = None
    unit: tuple[str, object] | None = None
    day: int | None = None
    part: tuple[int, int] | None = None
    pieces: int = 0


def understand_date(phrase: str, today: date) -> DateFact | None:
    """The range `phrase` names, None when it is not (wholly) a date phrase.

    Raises DateError for a phrase made of date pieces that names no real day."""
    atoms = lex(phrase)
    if not atoms:
        return None
    try:
        return _resolve(_segments(atoms, today), today)
    except NotADate:
        return None


def _segments(atoms: list[tuple[str, re.Match[str]]], today: date) -> list[_Segment]:
    segments: list[_Segment] = []
    current = _Segment()
    for kind, match in atoms:
        key = re.sub(r"\s+", "", match.group(0).lower())
        if kind == "bound":
            word = key
            if word in ("부터", "이후", "까지", "이전"):  # Korean: closes the phrase before it
                if current.pieces == 0 or current.bound is not None:
                    raise NotADate
                current.bound = _F_AFTER.get(word) or _F_BEFORE[word]
                segments.append(current)
                current = _Segment()
            else:  # English: opens the phrase after it
                if current.pieces:
                    segments.append(current)
                if current.bound is not None and current.pieces == 0:
                    raise NotADate
                bound = _F_AFTER.get(word) or _F_BEFORE[word]
                current = _Segment(bound=bound, bound_word=word)
            continue
        _add(current, kind, match, key, today)
    if current.pieces:
        segments.append(current)
    elif current.bound is not None:
        raise NotADate
    return segments


def _set_year(seg: _Segment, year: int, word: str | None = None) -> None:
    if seg.year is not None:
        raise NotADate
    if not 1 <= year <= 9998:
        raise DateError(f"{word or year}: 달력 밖의 해입니다 (the year {year} is out of range)")
    seg.year, seg.year_word = year, word


def _set_unit(seg: _Segment, unit: tuple[str, object]) -> None:
    if seg.unit is not None:
        raise NotADate
    seg.unit = unit


def _add(seg: _Segment, kind: str, match: re.Match[str], key: str, today: date) -> None:
    seg.pieces += 1
    if kind == "numdate":
        _set_year(seg, int(match.group("nd_y")))
        _set_unit(seg, ("month", _month(int(match.group("nd_m")), match.group(0))))
        if match.group("nd_d"):
            seg.day = int(match.group("nd_d"))
    elif kind in ("ago", "eago", "week_ago", "days_ago"):
        if kind == "week_ago":
            n, unit = 1, "주"
        elif kind == "days_ago":
            n, unit = {"이틀": 2, "사흘": 3, "나흘": 4}[match.group("da_w")], "일"
        else:
            raw = match.group("ago_n" if kind == "ago" else "eago_n").lower()
            n = int(raw) if raw.isdigit() else _F_NUMBERS[raw]
            unit = match.group("ago_u" if kind == "ago" else "eago_u").lower()
        if unit in ("년", "해", "year", "years"):
            _set_year(seg, today.year - n, key)
        else:
            _set_unit(seg, ("ago", (unit[0] if unit.isascii() else unit, n)))
    elif kind == "recent":
        word, raw = match.group("rc_w").lower(), (match.group("rc_n") or "").lower()
        unit = match.group("rc_u").lower()
        if unit == "일주일":
            if raw:
                raise NotADate
            raw, unit = "1", "주"
        if not raw and word != "최근":
            raise NotADate  # 지난 주, last week: a calendar week (relative), not 7 days
        n = int(raw) if raw.isdigit() else _F_NUMBERS.get(raw, 1)
        _set_unit(seg, ("recent", (unit[0] if unit.isascii() else unit, n)))
    elif kind == "yearword":
        _set_year(seg, today.year + _F_YEARS[key], key)
    elif kind == "y4":
        _set_year(seg, int(match.group("y4")))
    elif kind == "y2":
        yy = int(match.group("y2"))
        _set_year(seg, 2000 + yy if 2000 + yy <= today.year else 1900 + yy)
    elif kind == "month":
        _set_unit(seg, ("month", _month(int(match.group("month")), match.group(0))))
    elif kind == "emonth":
        _set_unit(seg, ("month", _F_MONTHS[key]))
    elif kind == "day":
        if seg.day is not None:
            raise NotADate
        seg.day = int(match.group("day"))
    elif kind == "season":
        _set_unit(seg, ("season", _F_SEASONS[key]))
    elif kind == "holiday":
        _set_unit(seg, ("holiday", _F_HOLIDAYS[key]))
    elif kind == "relative":
        _set_unit(seg, ("relative", _F_RELATIVE[key]))
    elif kind == "part":
        if seg.part is not None:
            raise NotADate
        seg.part = _F_PARTS[key]
    elif kind == "modifier":
        if seg.modifier is not None or seg.unit is not None:
            raise NotADate
        seg.modifier = _F_MODIFIERS[key]
    else:  # pragma: no cover - every named group is handled above
        raise NotADate


def _month(value: int, written: str) -> int:
    if not 1 <= value <= 12:
        raise DateError(f"{written.strip()}: 그런 달은 없습니다 (there is no month {value}; 1–12)")
    return value


def _resolve(segments: list[_Segment], today: date) -> DateFact:
    after: date | None = None
    before: date | None = None
    bounded = [s for s in segments if s.bound is not None]
    if len(segments) == 2 and segments[0].bound is None and segments[1].bound == "until":
        segments[0].bound = "from"  # 2023 to 2024
        bounded = segments
    if len(segments) > 2 or (len(segments) == 2 and len(bounded) != 2):
        raise NotADate
    for seg in segments:
        start, end = _span(seg, today)
        bound = seg.bound
        if bound == "from" and len(segments) == 1 and seg.bound_word == "from":
            bound = None  # "photos from 2023": the year itself
        if bound is None:
            after, before = start, end
        elif bound == "from":
            after = start
        elif bound == "after":
            after = end + timedelta(days=1)
        elif bound == "until":
            before = end
        else:  # before
            before = start - timedelta(days=1)
    if after is not None and before is not None and after > before:
        raise DateError(f"빈 기간입니다: {after} > {before} (the dates name an empty range)")
    return DateFact(after, before)


def _span(seg: _Segment, today: date) -> tuple[date, date]:
    year, unit, day, part, modifier = seg.year, seg.unit, seg.day, seg.part, seg.modifier
    if day is not None and day > 31 and (year is not None or unit is not None):
        raise DateError(f"{day}일: 그런 날은 없습니다 (no month has a day {day})")
    if unit is None:
        if modifier is not None or part is not None or seg.year_word == "올":
            raise NotADate  # 지난, 말, 올 alone
        if day is not None:
            if year is None:
                raise NotADate  # 5일 by itself is not a date
            raise DateError(
                f"{day}일: 몇 월인지 함께 써 주세요 (say which month, e.g. {year}년 3월 {day}일)"
            )
        if year is None:
            raise NotADate
        return date(year, 1, 1), date(year, 12, 31)
    kind, value = unit
    if modifier is not None and (year is not None or kind not in ("month", "season", "holiday")):
        raise NotADate
    if kind != "month" and day is not None:
        raise NotADate
    if part is not None and kind not in ("month", "relative"):
        raise NotADate
    if kind == "month":
        return _month_span(int(value), year, day, part, modifier, today)  # type: ignore[call-overload]
    if kind == "season":
        first = int(value)  # type: ignore[call-overload]
        return _recent(lambda y: _season(y, first), year, modifier, today)
    if kind == "holiday":
        return _recent(lambda y: _holiday(y, str(value)), year, modifier, today)
    if year is not None:
        raise NotADate  # 작년 어제: a relative day carries its own year
    if kind == "relative":
        return _relative(str(value), part, today)
    unit_name, n = value  # type: ignore[misc]
    if kind == "recent":
        return _last_days(unit_name, n, today), today
    return _ago(unit_name, n, today)


def _last_day(year: int, month: int) -> int:
    return calendar.monthrange(year, month)[1]


def _month_span(
    month: int,
    year: int | None,
    day: int | None,
    part: tuple[int, int] | None,
    modifier: str | None,
    today: date,
) -> tuple[date, date]:
    if day is not None and part is not None:
        raise NotADate
    if day is not None:
        if not 1 <= day <= 31:
            raise DateError(f"{month}월 {day}일: 그런 날은 없습니다 (no month has a day {day})")
        if day > max(_last_day(y, month) for y in (2024, 2025)):
            raise DateError(f"{month}월 {day}일: {month}월에는 {day}일이 없습니다 (no such day)")

        def one(y: int) -> tuple[date, date]:
            if day > _last_day(y, month):  # 2월 29일 outside a leap year
                raise DateError(
                    f"{y}년 {month}월 {day}일: {y}년 {month}월에는 {day}일이 없습니다 (no such day)"
                )
            return date(y, month, day), date(y, month, day)

        if year is None and month == 2 and day == 29:
            y = today.year if date(today.year, 2, 28) < today else today.year - 1
            while not calendar.isleap(y):
                y -= 1
            return one(y)
        return _recent(one, year, modifier, today)

    def whole(y: int) -> tuple[date, date]:
        last = _last_day(y, month)
        if part is None:
            return date(y, month, 1), date(y, month, last)
        return date(y, month, part[0]), date(y, month, min(part[1], last))

    return _recent(whole, year, modifier, today)


def _recent(span_of, year: int | None, modifier: str | None, today: date) -> tuple[date, date]:
    """The span in `year`, or without one the most recent that has begun (지난/last: ended;
    이번/this: this year's)."""
    if year is not None:
        return span_of(year)
    if modifier == "this":
        return span_of(today.year)
    for y in (today.year, today.year - 1, today.year - 2):
        start, end = span_of(y)
        if (end < today) if modifier == "last" else (start <= today):
            return start, end
    raise NotADate  # pragma: no cover - one of three years always qualifies


def _season(year: int, first_month: int) -> tuple[date, date]:
    if first_month == 12:
        return date(year, 12, 1), date(year + 1, 2, _last_day(year + 1, 2))
    end_month = first_month + 2
    return date(year, first_month, 1), date(year, end_month, _last_day(year, end_month))


def _holiday(year: int, name: str) -> tuple[date, date]:
    if name in ("seollal", "chuseok"):
        day = lunar.seollal(year) if name == "seollal" else lunar.chuseok(year)
        if day is None:
            word = "설날" if name == "seollal" else "추석"
            raise DateError(
                f"{year}년 {word}: 음력 명절은 {lunar.FIRST_YEAR}–{lunar.LAST_YEAR}년만 압니다 "
                f"(lunar holidays are known for {lunar.FIRST_YEAR}–{lunar.LAST_YEAR} only)"
            )
        return day - timedelta(days=1), day + timedelta(days=1)
    month, dom = {"christmas": (12, 25), "eve": (12, 24), "children": (5, 5),
                  "newyear": (1, 1)}[name]  # fmt: skip
    return date(year, month, dom), date(year, month, dom)


def _relative(name: str, part: tuple[int, int] | None, today: date) -> tuple[date, date]:
    if part is not None and name not in ("lastmonth", "month"):
        raise NotADate
    monday = today - timedelta(days=today.weekday())
    if name == "today":
        return today, today
    if name in ("yesterday", "2days"):
        day = today - timedelta(days=1 if name == "yesterday" else 2)
        return day, day
    if name == "week":
        return monday, monday + timedelta(days=6)
    if name == "lastweek":
        return monday - timedelta(days=7), monday - timedelta(days=1)
    if name == "weekend":
        return monday + timedelta(days=5), monday + timedelta(days=6)
    if name == "lastweekend":
        back = (today.weekday() + 1) % 7 or 7  # days back to the last Sunday before today
        sunday = today - timedelta(days=back)
        return sunday - timedelta(days=1), sunday
    year, month = today.year, today.month
    if name == "lastmonth":
        year, month = (year, month - 1) if month > 1 else (year - 1, 12)
    last = _last_day(year, month)
    if part is None:
        return date(year, month, 1), date(year, month, last)
    return date(year, month, part[0]), date(year, month, min(part[1], last))


def _last_days(unit: str, n: int, today: date) -> date:
    """The first day of the last `n` units up to today: 최근 3일 -> today and the 2 days before."""
    try:
        if unit in ("일", "d"):
            return today - timedelta(days=n - 1)
        if unit in ("주", "주일", "w"):
            return today - timedelta(days=7 * n - 1)
        months = 12 * n if unit in ("년", "y") else n
        index = today.year * 12 + today.month - 1 - months
        year, month = divmod(index, 12)
        day = min(today.day, _last_day(year, month + 1))
        return date(year, month + 1, day) + timedelta(days=1)
    except (OverflowError, ValueError):
        raise DateError(f"최근 {n}{unit}: 달력 밖입니다 (before the calendar begins)") from None


def _ago(unit: str, n: int, today: date) -> tuple[date, date]:
    try:
        if unit in ("일", "d"):
            day = today - timedelta(days=n)
            return day, day
        if unit in ("주", "주일", "w"):
            monday = today - timedelta(days=today.weekday() + 7 * n)
            return monday, monday + timedelta(days=6)
        # 달, 개월, months
        index = today.year * 12 + today.month - 1 - n
        year, month = divmod(index, 12)
        month += 1
        return date(year, month, 1), date(year, month, _last_day(year, month))
    except (OverflowError, ValueError):
        raise DateError(f"{n}{unit} 전: 달력 밖입니다 (before the calendar begins)") from None
