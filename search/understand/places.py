"""Place words: the library's place names at every level, by full name, short form or alias.

A library's places are paths from the top level down, e.g. ("제주특별자치도", "서귀포시",
"성산읍") in Korea or ("일본", "도쿄") abroad; every prefix of a path is a place (a node) with
the photos below it. Each node is found by:
- its own name (제주특별자치도, 서귀포시; case-insensitive for Latin names);
- its short form, derived by rule: one administrative suffix stripped (특별자치도, 특별자치시,
  특별시, 광역시, 도, 시, 군, 구, 읍, 면, 동, 리) where at least two syllables are left
  (서귀포시 -> 서귀포, 강남구 -> 강남, 제주특별자치도 -> 제주; 중구 keeps its name) and they
  are not a common noun (COMMON_WORDS: 공항동 is not found by 공항);
- the alias table below: official short forms (충북, 전남), former names (강원도), and Korean
  and English names of places abroad (도쿄 = 동경 = Tokyo).
A short form or alias shared by places that are not one inside the other (광주 for 광주광역시
and 경기도 광주시) is ambiguous and not used; when one of them contains the others (제주 for
제주특별자치도 and its 제주시) it names the outer one. A full name shared by several places
(고성군 in 강원 and 경남) names them all.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable, Sequence

Path = tuple[str, ...]

_SUFFIXES = ("특별자치도", "특별자치시", "특별시", "광역시", "도", "시", "군", "구", "읍", "면",
             "동", "리")  # fmt: skip

# Each group names one place; any member found in a library makes the others find it too.
# fmt: off
ALIASES: tuple[tuple[str, ...], ...] = (
    ("제주특별자치도", "제주도", "jeju", "jeju-do", "jeju island"),
    ("서울특별시", "서울시", "seoul"), ("부산광역시", "부산시", "busan", "pusan"),
    ("대구광역시", "daegu"), ("인천광역시", "incheon"), ("광주광역시", "gwangju"),
    ("대전광역시", "daejeon"), ("울산광역시", "ulsan"), ("세종특별자치시", "세종시", "sejong"),
    ("경기도", "gyeonggi"), ("강원특별자치도", "강원도", "gangwon"),
    ("충청북도", "충북"), ("충청남도", "충남"), ("전북특별자치도", "전라북도", "전북"),
    ("전라남도", "전남"), ("경상북도", "경북"), ("경상남도", "경남"),
    ("서귀포시", "seogwipo"), ("강남구", "gangnam"), ("해운대구", "haeundae"),
    ("경주시", "gyeongju"), ("강릉시", "gangneung"), ("속초시", "sokcho"), ("전주시", "jeonju"),
    ("여수시", "yeosu"), ("수원시", "suwon"),
    ("대한민국", "한국", "korea", "south korea"),
    ("일본", "japan"), ("도쿄", "도쿄도", "동경", "tokyo"), ("오사카", "osaka"), ("교토", "kyoto"),
    ("후쿠오카", "fukuoka"), ("삿포로", "sapporo"), ("오키나와", "okinawa"),
    ("나고야", "nagoya"), ("중국", "china"), ("베이징", "북경", "beijing"),
    ("상하이", "상해", "shanghai"), ("홍콩", "hong kong"), ("마카오", "macau", "macao"),
    ("대만", "타이완", "taiwan"), ("타이베이", "타이페이", "taipei"),
    ("미국", "usa", "us", "united states", "united states of america", "america"),
    ("뉴욕", "new york", "new york city", "nyc"), ("로스앤젤레스", "엘에이", "los angeles"),
    ("샌프란시스코", "san francisco"), ("하와이", "hawaii"), ("호놀룰루", "honolulu"),
    ("라스베이거스", "라스베가스", "las vegas"), ("시애틀", "seattle"), ("괌", "guam"),
    ("캐나다", "canada"), ("밴쿠버", "vancouver"), ("토론토", "toronto"),
    ("영국", "uk", "united kingdom", "england", "britain"), ("런던", "london"),
    ("프랑스", "france"), ("파리", "paris"), ("독일", "germany"), ("베를린", "berlin"),
    ("뮌헨", "munich"), ("이탈리아", "italy"), ("로마", "rome"),
    ("베네치아", "베니스", "venice"), ("피렌체", "florence"), ("밀라노", "milan"),
    ("스페인", "spain"), ("바르셀로나", "barcelona"), ("마드리드", "madrid"),
    ("스위스", "switzerland"), ("오스트리아", "austria"), ("체코", "czechia", "czech republic"),
    ("프라하", "prague"), ("튀르키예", "터키", "turkey", "türkiye"), ("이스탄불", "istanbul"),
    ("태국", "thailand"), ("방콕", "bangkok"), ("치앙마이", "chiang mai"),
    ("푸껫", "푸켓", "phuket"), ("베트남", "vietnam", "viet nam"), ("하노이", "hanoi"),
    ("호찌민", "호치민", "사이공", "ho chi minh city", "saigon"), ("다낭", "da nang", "danang"),
    ("나트랑", "냐짱", "nha trang"), ("필리핀", "philippines"), ("세부", "cebu"),
    ("마닐라", "manila"), ("싱가포르", "singapore"), ("말레이시아", "malaysia"),
    ("쿠알라룸푸르", "kuala lumpur"), ("인도네시아", "indonesia"), ("발리", "bali"),
    ("호주", "오스트레일리아", "australia"), ("시드니", "sydney"), ("멜버른", "melbourne"),
    ("뉴질랜드", "new zealand"), ("몽골", "mongolia"),
)
# fmt: on

# Common nouns that are also short forms of 동 names (공항동, 대학동, 중앙동...): as a query
# word they mean the thing, so they never become a short form (the full name still works).
COMMON_WORDS = frozenset({"공항", "대학", "중앙", "신사", "사직", "시장", "온천", "해안", "항구",
                          "학교", "공원", "역전", "수영", "사랑", "대신",
                          "장안", "평화", "행복", "교대", "시청", "도청"})  # fmt: skip

MAX_WORDS = 4  # the longest alias in words ("united states of america")


def key(text: str) -> str:
    """How a place word is compared: NFC, case-folded, single spaces."""
    return " ".join(unicodedata.normalize("NFC", text).casefold().split())


def short_form(name: str) -> str | None:
    """`name` with one administrative suffix stripped, if two or more syllables remain and
    they are not a common noun (공항동 keeps its name)."""
    for suffix in _SUFFIXES:
        if name.endswith(suffix) and len(name) - len(suffix) >= 2:
            rest = name[: -len(suffix)]
            hangul = all("가" <= ch <= "힣" for ch in rest[-1:])
            return rest if hangul and rest not in COMMON_WORDS else None
    return None


class PlaceIndex:
    """Every place of a library and the words that find it; built once per library."""

    def __init__(self, rows: Iterable[tuple[Sequence[str], int]]) -> None:
        counts: dict[Path, int] = {}
        for names, count in rows:
            if isinstance(names, str):  # a place is a path of names, never one joined string
                raise TypeError(f"a place row holds a sequence of names, not {names!r}")
            if count <= 0:
                continue
            path: Path = ()
            for name in names:
                name = unicodedata.normalize("NFC", str(name)).strip()
                if not name:
                    break
                path = (*path, name)
                counts[path] = counts.get(path, 0) + int(count)
        self.counts = counts
        exact: dict[str, set[Path]] = {}
        derived: dict[str, set[Path]] = {}
        groups = {key(m): group for group in ALIASES for m in group}
        for node in counts:
            name = key(node[-1])
            exact.setdefault(name, set()).add(node)
            for form in {short_form(node[-1]), *groups.get(name, ())} - {None, name}:
                derived.setdefault(key(form), set()).add(node)  # type: ignore[arg-type]
            # A name that is the short form of an alias (강원 for 강원도) finds it too.
            for member in groups.get(name, ()):
                short = short_form(member)
                if short:
                    derived.setdefault(key(short), set()).add(node)
        self._lookup: dict[str, tuple[Path, ...]] = {}
        for word, nodes in exact.items():
            self._lookup[word] = tuple(sorted(nodes))
        for word, nodes in derived.items():
            if word in self._lookup:
                continue
            chosen = _unambiguous(nodes)
            if chosen is not None:
                self._lookup[word] = (chosen,)

    def find(self, word: str) -> tuple[Path, ...]:
        """The places `word` names in this library (empty when none)."""
        return self._lookup.get(key(word), ())

    def __len__(self) -> int:
        return len(self.counts)


def _unambiguous(nodes: set[Path]) -> Path | None:
    """The one place `nodes` mean: all the same node, or one containing all the others."""
    if len(nodes) == 1:
        return next(iter(nodes))
    outer = min(nodes, key=len)
    if all(node[: len(outer)] == outer for node in nodes):
        return outer
    return None


def label(path: Path) -> str:
    """A place as shown and as filtered on: its names from the top, space-separated."""
    return " ".join(path)


def narrow(groups: Iterable[tuple[Path, ...]]) -> tuple[Path, ...]:
    """The places several place words name together, in their first order: a word whose
    places lie inside an earlier word's place narrows it (서울 중구 -> 서울특별시 중구 only,
    not every 중구), and a place inside another one named replaces it (제주 서귀포 ->
    제주특별자치도 서귀포시); otherwise the places add up (제주 부산 -> both)."""
    chosen: list[Path] = []
    for group in groups:
        inside = [p for p in group if any(_within(p, c) for c in chosen)]
        if inside:
            chosen = [c for c in chosen if not any(_within(p, c) for p in inside)]
            chosen.extend(inside)
        else:
            chosen.extend(p for p in group if not any(_within(c, p) for c in chosen))
    return tuple(dict.fromkeys(chosen))


def _within(inner: Path, outer: Path) -> bool:
    return len(inner) > len(outer) and inner[: len(outer)] == outer
