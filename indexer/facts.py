"""A photo's facts from its metadata: when, where, with what camera, and its keywords and caption.

`read_facts` reads EXIF (DateTimeOriginal with OffsetTimeOriginal, the GPS IFD, make, model,
lens, Windows XPKeywords), XMP (dc:subject, dc:description, photoshop:Country/State/City,
Iptc4xmpCore:Location) and IPTC-IIM (Keywords 2:25, Caption-Abstract 2:120, the location
datasets) from a path, from an image the caller opened (not decoded here), or from the decoded
copy `koclip.preprocess.open_image` returns (its `info` keeps the metadata bytes): the
indexer's load stage needs no second open.

Metadata is untrusted input. Every field falls back to None (or empty) on its own, with a short
reason in `PhotoFacts.problems` ("field: why") when the fact was present but unreadable, so
`info` can count them; nothing here raises for a photo's metadata. XMP is parsed by defusedxml
with DTDs refused (so no entity expands, none is fetched, no local file is read) and only up
to `MAX_XMP_BYTES`; IPTC by a reader bounded by its bytes.
"""

from __future__ import annotations

import math
import os
import re
import unicodedata
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from PIL import Image, IptcImagePlugin, TiffImagePlugin

from db.schema import camera_label

# XMP above this many bytes is not parsed (real packets are a few kB; JPEG caps one at 64 kB).
MAX_XMP_BYTES = 1 << 20
# Bounds on what one photo may contribute (a keyword list is not a document).
MAX_KEYWORDS = 100
MAX_KEYWORD_CHARS = 100
MAX_TEXT_CHARS = 2000  # a caption
MAX_NAME_CHARS = 100  # camera make, model, lens

# Within this many degrees of (0, 0) a position is "null island": a writer's placeholder.
NULL_ISLAND_DEGREES = 1e-5

# EXIF tags (IFD0, the Exif IFD, the GPS IFD).
_MAKE, _MODEL, _XP_KEYWORDS = 0x010F, 0x0110, 0x9C9E
_EXIF_IFD, _GPS_IFD = 0x8769, 0x8825
_DATETIME_ORIGINAL, _OFFSET_TIME_ORIGINAL = 0x9003, 0x9011
_LENS_MAKE, _LENS_MODEL = 0xA433, 0xA434
_GPS_LAT_REF, _GPS_LAT, _GPS_LON_REF, _GPS_LON = 1, 2, 3, 4
_GPS_ALT_REF, _GPS_ALT = 5, 6
# TIFF keeps XMP in this tag (JPEG, PNG, WebP and HEIF readers put it in `info["xmp"]`).
_TIFF_XMP = 700
# IPTC datasets (record, number).
_IPTC_CHARSET, _IPTC_KEYWORDS, _IPTC_CAPTION = (1, 90), (2, 25), (2, 120)
# Where a person said the photo was taken, broad to narrow: Country, Province-State, City,
# Sub-location.
_IPTC_PLACES = ((2, 101), (2, 95), (2, 90), (2, 92))

_RDF = "{http://www.w3.org/1999/02/22-rdf-syntax-ns#}"
_DC = "{http://purl.org/dc/elements/1.1/}"
_PHOTOSHOP = "{http://ns.adobe.com/photoshop/1.0/}"
_IPTC_CORE = "{http://iptc.org/std/Iptc4xmpCore/1.0/xmlns/}"
_XMP_PLACES = (_PHOTOSHOP + "Country", _PHOTOSHOP + "State", _PHOTOSHOP + "City")
_XMP_PLACES += (_IPTC_CORE + "Location",)
_XML_LANG = "{http://www.w3.org/XML/1998/namespace}lang"
_OFFSET = re.compile(r"^([+-])(\d{2}):?(\d{2})$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")


@dataclass(frozen=True)
class PhotoFacts:
    """What a photo's metadata says; None (or empty) where it says nothing readable."""

    taken_at: datetime | None = None  # local wall time; aware when OffsetTimeOriginal was given
    lat: float | None = None  # WGS84 degrees, north positive
    lon: float | None = None  # WGS84 degrees, east positive
    altitude: float | None = None  # metres above sea level (negative below)
    camera_make: str | None = None
    camera_model: str | None = None
    lens: str | None = None
    keywords: tuple[str, ...] = ()  # XMP dc:subject, IPTC Keywords, Windows tags; deduplicated
    caption: str | None = None  # XMP dc:description, else IPTC Caption-Abstract
    # place names a person or an app wrote (XMP photoshop:Country/State/City and
    # Iptc4xmpCore:Location, else IPTC's), broad to narrow; for photos without GPS
    place_names: tuple[str, ...] = ()
    problems: tuple[str, ...] = ()  # "field: reason" for each fact present but unreadable

    @property
    def unreadable(self) -> tuple[str, ...]:
        """The fields with a problem ("gps", "xmp", ...), for `info`'s counts."""
        return tuple(dict.fromkeys(p.split(":", 1)[0] for p in self.problems))

    @property
    def has_position(self) -> bool:
        return self.lat is not None and self.lon is not None

    @property
    def camera(self) -> str | None:
        """Make and model as people say it: "Apple iPhone 15", "Canon EOS R5" (not "Canon Canon
        EOS R5"), the make alone or the model alone when only one is known."""
        return camera_label(self.camera_make, self.camera_model)  # as stored rows say it


def read_facts(
    source: str | os.PathLike[str] | Image.Image, *, max_xmp_bytes: int = MAX_XMP_BYTES
) -> PhotoFacts:
    """The facts of one photo, from a path or an image opened by the caller (left open).

    Only metadata is read: an opened image is not decoded, a path is opened lazily and
    closed. Never raises for what the file holds; see `PhotoFacts.problems`.
    """
    if isinstance(source, Image.Image):
        return _read(source, max_xmp_bytes)
    try:
        image = Image.open(source)
    except Exception as exc:  # not an image, unreadable, or a decoder's complaint
        return PhotoFacts(problems=(f"file: cannot open ({type(exc).__name__})",))
    with image:
        return _read(image, max_xmp_bytes)


def _read(image: Image.Image, max_xmp_bytes: int) -> PhotoFacts:
    problems: list[str] = []
    fields: dict[str, object] = {}
    exif = _exif(image, problems)
    if exif is not None:
        exif_ifd = _ifd(exif, _EXIF_IFD, "exif", problems)
        fields["taken_at"] = _guard(problems, "taken_at", _taken_at, exif_ifd)
        position = _guard(problems, "gps", _position, _ifd(exif, _GPS_IFD, "gps", problems))
        if position is not None:
            fields["lat"], fields["lon"], fields["altitude"] = position
        fields["camera_make"] = _guard(problems, "camera", _name, exif.get(_MAKE))
        fields["camera_model"] = _guard(problems, "camera", _name, exif.get(_MODEL))
        fields["lens"] = _guard(problems, "lens", _lens, exif_ifd)
    tags: list[Tags] = []
    xmp = _guard(problems, "xmp", _xmp_bytes, image)
    if xmp:
        tags.append(parse_xmp(xmp, max_bytes=max_xmp_bytes))
        problems.extend(tags[-1].problems)
    iptc = _guard(problems, "iptc", _iptc, image)
    if iptc is not None:
        tags.append(iptc)
    keywords = [k for t in tags for k in t.keywords]
    if exif is not None:
        keywords.extend(_guard(problems, "keywords", _xp_keywords, exif.get(_XP_KEYWORDS)) or ())
    fields["keywords"] = _unique(keywords)
    fields["caption"] = next((t.caption for t in tags if t.caption), None)
    fields["place_names"] = next((t.place_names for t in tags if t.place_names), ())
    return PhotoFacts(**fields, problems=tuple(dict.fromkeys(problems)))  # type: ignore[arg-type]


class _Unreadable(Exception):
    """A fact is present but cannot be read; the message is the reason."""


def _guard(problems: list[str], field: str, read, *args):
    """`read(*args)`, or None with a problem noted: one field's failure costs only that field."""
    try:
        return read(*args)
    except _Unreadable as exc:
        problems.append(f"{field}: {exc}")
    except (RecursionError, MemoryError):
        problems.append(f"{field}: unreadable (nested too deep or too large)")
    except Exception as exc:  # PIL's parsers raise many types on garbage
        problems.append(f"{field}: unreadable ({type(exc).__name__})")
    return None


# -- EXIF -----------------------------------------------------------------------------------


def _exif(image: Image.Image, problems: list[str]) -> Image.Exif | None:
    try:
        exif = image.getexif()
    except Exception as exc:
        problems.append(f"exif: unreadable ({type(exc).__name__})")
        return None
    return exif if len(exif) else None


def _ifd(exif: Image.Exif, tag: int, field: str, problems: list[str]) -> dict:
    try:
        found = exif.get_ifd(tag)
    except Exception as exc:
        problems.append(f"{field}: unreadable ({type(exc).__name__})")
        return {}
    if not isinstance(found, dict) or (not found and exif.get(tag) is not None):
        problems.append(f"{field}: unreadable (truncated or invalid)")  # pointed to, not there
        return {}
    return found


def _text(value: object) -> str | None:
    """An EXIF/IPTC string: bytes decoded (UTF-8, else CP949, else Latin-1), NULs and control
    characters dropped, spaces collapsed, NFC; None when nothing is left."""
    if isinstance(value, bytes):
        value = _decode(value)
    if not isinstance(value, str):
        raise _Unreadable(f"not text ({type(value).__name__})")
    text = " ".join(_CONTROL.sub(" ", value).split())
    return unicodedata.normalize("NFC", text) or None


def _decode(data: bytes) -> str:
    for encoding in ("utf-8", "cp949"):
        try:
            return data.decode(encoding)
        except UnicodeDecodeError:
            continue
    return data.decode("latin-1")


def _name(value: object) -> str | None:
    if value is None:
        return None
    text = _text(value)
    return text[:MAX_NAME_CHARS] if text else None


def _lens(exif_ifd: dict) -> str | None:
    model = _name(exif_ifd.get(_LENS_MODEL))
    make = _name(exif_ifd.get(_LENS_MAKE))
    if model and make and not model.casefold().startswith(make.split()[0].casefold()):
        return f"{make} {model}"[:MAX_NAME_CHARS]
    return model


def _taken_at(exif_ifd: dict) -> datetime | None:
    raw = exif_ifd.get(_DATETIME_ORIGINAL)
    if raw is None:
        return None
    text = _text(raw)
    if text is None or text.startswith("0000") or not text.strip(": "):
        return None  # the standard's "unknown" (blanks and colons) or zeros: an unset clock
    stamp = text[:19]
    if stamp[4:5] == stamp[7:8] == "-":  # ISO dashes, as some apps write: 2024-07-15T10:30:00
        stamp = f"{stamp[:4]}:{stamp[5:7]}:{stamp[8:10]} {stamp[11:]}"
    try:
        taken = datetime.strptime(stamp, "%Y:%m:%d %H:%M:%S")
    except ValueError:
        raise _Unreadable(f"not an EXIF date ({text[:30]!r})") from None
    offset = exif_ifd.get(_OFFSET_TIME_ORIGINAL)
    if offset is not None:
        match = _OFFSET.match(_text(offset) or "")
        if match:
            sign = -1 if match[1] == "-" else 1
            delta = timedelta(hours=int(match[2]), minutes=int(match[3]))
            if delta <= timedelta(hours=14) and int(match[3]) < 60:
                taken = taken.replace(tzinfo=timezone(sign * delta))
    return taken


def _number(value: object) -> float:
    """An EXIF rational (or int) as a finite float; a zero denominator or NaN is unreadable."""
    if isinstance(value, bool) or not (
        isinstance(value, (int, float)) or hasattr(value, "denominator")
    ):
        raise _Unreadable(f"not a number ({type(value).__name__})")
    if getattr(value, "denominator", 1) == 0:
        raise _Unreadable("zero denominator")
    number = float(value)  # type: ignore[arg-type]
    if not math.isfinite(number):
        raise _Unreadable("not a finite number")
    return number


def _degrees(value: object, ref: object, positive: str, negative: str, limit: float) -> float:
    """(degrees, minutes, seconds) and its hemisphere letter as signed decimal degrees."""
    if isinstance(value, (int, float)) or hasattr(value, "denominator"):
        parts = [value]  # a single decimal value: some writers do this
    elif isinstance(value, (tuple, list)) and 1 <= len(value) <= 3:
        parts = list(value)
    else:
        raise _Unreadable("not degrees, minutes, seconds")
    numbers = [_number(p) for p in parts] + [0.0] * (3 - len(parts))
    deg, minutes, seconds = numbers
    if deg < 0 or not 0 <= minutes < 60 or not 0 <= seconds < 60:
        raise _Unreadable("minutes or seconds out of range")
    if isinstance(ref, bytes):
        ref = ref.decode("ascii", "replace")
    letter = ref.strip("\x00 ").upper() if isinstance(ref, str) else ""
    if letter not in (positive, negative):
        raise _Unreadable(f"no {positive}/{negative} reference")
    degrees = deg + minutes / 60 + seconds / 3600
    if degrees > limit:
        raise _Unreadable("out of range")
    return -degrees if letter == negative else degrees


def _position(gps: dict) -> tuple[float, float, float | None] | None:
    if gps.get(_GPS_LAT) is None and gps.get(_GPS_LON) is None:
        return None
    lat = _degrees(gps.get(_GPS_LAT), gps.get(_GPS_LAT_REF), "N", "S", 90.0)
    lon = _degrees(gps.get(_GPS_LON), gps.get(_GPS_LON_REF), "E", "W", 180.0)
    if abs(lat) < NULL_ISLAND_DEGREES and abs(lon) < NULL_ISLAND_DEGREES:
        raise _Unreadable("(0, 0) placeholder")
    altitude = None
    if gps.get(_GPS_ALT) is not None:
        try:
            altitude = _number(gps[_GPS_ALT])
        except _Unreadable:
            altitude = None  # the position stands without it
        below = gps.get(_GPS_ALT_REF) in (1, b"\x01")
        if altitude is not None and (altitude < 0 or altitude > 100_000):
            altitude = None  # negative magnitudes and orbit heights are garbage
        elif altitude is not None and below:
            altitude = -altitude
    return lat, lon, altitude


def _xp_keywords(value: object) -> tuple[str, ...]:
    """Windows Explorer tags: UTF-16LE, ";"-separated (PIL gives bytes or a tuple of ints)."""
    if value is None:
        return ()
    if isinstance(value, tuple) and all(isinstance(v, int) and 0 <= v < 256 for v in value):
        value = bytes(value)
    if not isinstance(value, bytes):
        raise _Unreadable(f"not UTF-16 bytes ({type(value).__name__})")
    text = value.decode("utf-16-le", "replace").rstrip("\x00")
    return tuple(text.split(";"))


# -- XMP --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Tags:
    """What a person or an app wrote about a photo in its XMP or IPTC."""

    keywords: tuple[str, ...] = ()
    caption: str | None = None
    place_names: tuple[str, ...] = ()  # country, state, city, location: those given
    problems: tuple[str, ...] = ()


def _xmp_bytes(image: Image.Image) -> bytes | None:
    raw = image.info.get("xmp")
    if raw is None and hasattr(image, "tag_v2"):  # TIFF
        raw = image.tag_v2.get(_TIFF_XMP)
    if raw is None:
        return None
    if isinstance(raw, str):
        raw = raw.encode("utf-8", "replace")
    if isinstance(raw, tuple) and all(isinstance(v, int) and 0 <= v < 256 for v in raw):
        raw = bytes(raw)
    if not isinstance(raw, bytes):
        raise _Unreadable(f"not bytes ({type(raw).__name__})")
    return raw


def parse_xmp(data: bytes, *, max_bytes: int = MAX_XMP_BYTES) -> Tags:
    """dc:subject, dc:description and the place names of an XMP packet; hardened, never
    raises.

    DTDs are refused outright (XMP has no use for one): no entity is declared, so none
    expands, and no external entity or local file is ever read.
    """
    from defusedxml import DefusedXmlException
    from defusedxml.ElementTree import ParseError, fromstring

    if len(data) > max_bytes:
        size = f"{len(data) / (1 << 20):.1f} MB" if len(data) >= 1 << 20 else f"{len(data)} bytes"
        return Tags(problems=(f"xmp: too large ({size}, limit {max_bytes} bytes)",))
    data = data.strip(b"\x00 \t\r\n")
    try:
        root = fromstring(data, forbid_dtd=True, forbid_entities=True, forbid_external=True)
    except DefusedXmlException as exc:
        return Tags(problems=(f"xmp: refused ({type(exc).__name__})",))
    except (ParseError, ValueError, UnicodeError):
        return Tags(problems=("xmp: not well-formed XML",))
    except (RecursionError, MemoryError):
        return Tags(problems=("xmp: nested too deep",))
    keywords: list[str] = []
    captions: list[tuple[str, str]] = []  # (xml:lang, text)
    places: dict[str, str] = {}
    try:
        for element in root.iter():
            if element.tag == _DC + "subject":
                keywords.extend(text for _, text in _rdf_values(element))
            elif element.tag == _DC + "description":
                captions.extend(_rdf_values(element))
            elif element.tag in _XMP_PLACES and element.text:
                places.setdefault(element.tag, element.text)
            for name, value in element.attrib.items():  # the attribute shorthand
                if name == _DC + "description":
                    captions.append(("", value))
                elif name == _DC + "subject":
                    keywords.append(value)
                elif name in _XMP_PLACES:
                    places.setdefault(name, value)
    except RecursionError:
        return Tags(problems=("xmp: nested too deep",))
    caption = next((t for lang, t in captions if lang == "x-default"), None)
    if caption is None and captions:
        caption = captions[0][1]
    place_names = _unique(places.get(tag, "") for tag in _XMP_PLACES)
    return Tags(keywords=_unique(keywords), caption=_caption(caption), place_names=place_names)


def _rdf_values(element) -> Iterator[tuple[str, str]]:
    """(xml:lang, text) of each rdf:li under a property (Bag, Seq or Alt), or its own text."""
    items = [li for li in element.iter(_RDF + "li")]
    if not items and element.text and element.text.strip():
        yield "", element.text
    for li in items:
        yield li.get(_XML_LANG, ""), "".join(li.itertext())


# -- IPTC -------------------------------------------------------------------------------------


def _iptc(image: Image.Image) -> Tags | None:
    """IPTC-IIM from a JPEG's Photoshop resource 0x0404 (read from `info`, so a decoded copy
    of the image still has it) or a TIFF's IPTC tag (through Pillow)."""
    photoshop = image.info.get("photoshop")
    if isinstance(photoshop, dict) and isinstance(photoshop.get(0x0404), bytes):
        info = iim_datasets(photoshop[0x0404])
    elif isinstance(image, TiffImagePlugin.TiffImageFile):
        info = IptcImagePlugin.getiptcinfo(image) or {}
    else:
        return None
    if not info:
        return None
    charset = info.get(_IPTC_CHARSET)
    charset = charset[0] if isinstance(charset, list) and charset else charset
    utf8 = isinstance(charset, bytes) and charset.startswith(b"\x1b%G")

    def strings(value: object) -> list[str]:
        values = value if isinstance(value, list) else [value]
        return [
            v.decode("utf-8", "replace") if utf8 else _decode(v)
            for v in values
            if isinstance(v, bytes)
        ]

    captions = strings(info.get(_IPTC_CAPTION, []))
    return Tags(
        keywords=_unique(strings(info.get(_IPTC_KEYWORDS, []))),
        caption=_caption(captions[0]) if captions else None,
        place_names=_unique(n for tag in _IPTC_PLACES for n in strings(info.get(tag, []))[:1]),
    )


def iim_datasets(data: bytes) -> dict[tuple[int, int], list[bytes]]:
    """IPTC-IIM datasets, (record, number) -> values, in order; reading stops at the first byte
    that does not start a whole dataset (garbage or truncation keeps what came before)."""
    out: dict[tuple[int, int], list[bytes]] = {}
    pos = 0
    while pos + 5 <= len(data) and data[pos] == 0x1C:
        record, number = data[pos + 1], data[pos + 2]
        size = int.from_bytes(data[pos + 3 : pos + 5], "big")
        pos += 5
        if size & 0x8000:  # an extended dataset: the next (size & 0x7FFF) bytes hold the length
            width = size & 0x7FFF
            if not 0 < width <= 4 or pos + width > len(data):
                break
            size = int.from_bytes(data[pos : pos + width], "big")
            pos += width
        if pos + size > len(data):
            break
        out.setdefault((record, number), []).append(data[pos : pos + size])
        pos += size
    return out


# -- cleaning ---------------------------------------------------------------------------------


def _caption(text: str | None) -> str | None:
    if text is None:
        return None
    cleaned = " ".join(_CONTROL.sub(" ", text).split())
    return unicodedata.normalize("NFC", cleaned)[:MAX_TEXT_CHARS] or None


def _unique(words: Iterable[str]) -> tuple[str, ...]:
    """Cleaned keywords, first spelling kept, duplicates (ignoring case) and blanks dropped."""
    seen: dict[str, str] = {}
    for word in words:
        cleaned = " ".join(_CONTROL.sub(" ", word).split())
        cleaned = unicodedata.normalize("NFC", cleaned)[:MAX_KEYWORD_CHARS]
        if cleaned:
            seen.setdefault(cleaned.casefold(), cleaned)
        if len(seen) >= MAX_KEYWORDS:
            break
    return tuple(seen.values())
