"""Photos with metadata, written here byte by byte (EXIF by Pillow, XMP and IPTC segments by
hand), for tests/test_facts.py and bench/facts.py; and a library taken back to schema 3 (before
photos had facts and words)."""

from __future__ import annotations

import io
import sqlite3
import struct
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from PIL import Image
from PIL.TiffImagePlugin import IFDRational

from db.engine import DB_NAME

EXIF_IFD, GPS_IFD = 0x8769, 0x8825

# The photo columns schema 4 added (a photo's facts), in `photos` and `set_aside` alike.
FACT_COLUMNS = (
    "lat", "lon", "place", "place_path", "camera_make", "camera_model", "lens", "keywords",
    "caption", "facts", "facts_problems",
)  # fmt: skip


def make_schema_three(library_dir: Path) -> None:
    """What a schema-3 program left in the (closed) library: no facts columns, no words, no
    place index."""
    conn = sqlite3.connect(library_dir / DB_NAME)
    conn.execute("DROP TRIGGER photos_forget_words")
    conn.execute("DROP TABLE photo_words")
    conn.execute("DROP INDEX ix_photos_place")
    for column in FACT_COLUMNS:
        conn.execute(f"ALTER TABLE photos DROP COLUMN {column}")
        conn.execute(f"ALTER TABLE set_aside DROP COLUMN {column}")
    conn.execute("UPDATE manifest SET schema_version = 3")
    conn.commit()
    conn.close()


def dms(degrees: float) -> tuple[IFDRational, IFDRational, IFDRational]:
    """Unsigned decimal degrees as EXIF (degrees, minutes, seconds) rationals."""
    degrees = abs(degrees)
    d = int(degrees)
    m = int((degrees - d) * 60)
    s = round(((degrees - d) * 60 - m) * 60 * 10000)
    return IFDRational(d, 1), IFDRational(m, 1), IFDRational(s, 10000)


def gps_tags(lat: float, lon: float, altitude: float | None = None) -> dict:
    tags = {
        1: "N" if lat >= 0 else "S",
        2: dms(lat),
        3: "E" if lon >= 0 else "W",
        4: dms(lon),
    }
    if altitude is not None:
        tags[5] = 1 if altitude < 0 else 0
        tags[6] = IFDRational(round(abs(altitude) * 100), 100)
    return tags


def make_exif(
    *,
    taken: str | None = "2024:07:15 10:30:00",
    offset: str | None = None,
    gps: dict | None = None,
    make: str | None = None,
    model: str | None = None,
    lens: str | None = None,
    xp_keywords: str | None = None,
) -> Image.Exif:
    exif = Image.Exif()
    if make is not None:
        exif[0x010F] = make
    if model is not None:
        exif[0x0110] = model
    if xp_keywords is not None:
        exif[0x9C9E] = (xp_keywords + "\x00").encode("utf-16-le")
    sub = exif.get_ifd(EXIF_IFD)
    if taken is not None:
        sub[0x9003] = taken
    if offset is not None:
        sub[0x9011] = offset
    if lens is not None:
        sub[0xA434] = lens
    if gps is not None:
        exif.get_ifd(GPS_IFD).update(gps)
    return exif


def xmp_packet(
    subjects: Iterable[str] = (),
    description: str | None = None,
    *,
    city: str | None = None,
    country: str | None = None,
) -> bytes:
    places = "".join(
        f"<photoshop:{tag}>{value}</photoshop:{tag}>"
        for tag, value in (("Country", country), ("City", city))
        if value is not None
    )
    items = "".join(f"<rdf:li>{s}</rdf:li>" for s in subjects)
    desc = (
        f'<dc:description><rdf:Alt><rdf:li xml:lang="x-default">{description}</rdf:li>'
        "</rdf:Alt></dc:description>"
        if description is not None
        else ""
    )
    return (
        '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>'
        '<x:xmpmeta xmlns:x="adobe:ns:meta/">'
        '<rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        '<rdf:Description rdf:about="" xmlns:dc="http://purl.org/dc/elements/1.1/" '
        'xmlns:photoshop="http://ns.adobe.com/photoshop/1.0/">'
        f"<dc:subject><rdf:Bag>{items}</rdf:Bag></dc:subject>{desc}{places}"
        "</rdf:Description></rdf:RDF></x:xmpmeta>"
        '<?xpacket end="w"?>'
    ).encode()


def iptc_segment(
    keywords: Iterable[str] = (),
    caption: str | None = None,
    *,
    utf8: bool = True,
    city: str | None = None,
    cut: int = 0,
) -> bytes:
    """A JPEG APP13 segment: Photoshop image resource 0x0404 holding IPTC-IIM datasets, the
    last `cut` bytes of the datasets left out (sizes kept consistent around them)."""

    def dataset(record: int, number: int, value: bytes) -> bytes:
        return struct.pack(">BBBH", 0x1C, record, number, len(value)) + value

    encoding = "utf-8" if utf8 else "cp949"
    iim = dataset(1, 90, b"\x1b%G") if utf8 else b""
    iim += b"".join(dataset(2, 25, k.encode(encoding)) for k in keywords)
    if caption is not None:
        iim += dataset(2, 120, caption.encode(encoding))
    if city is not None:
        iim += dataset(2, 90, city.encode(encoding))
    iim = iim[: len(iim) - cut]
    resource = b"8BIM" + struct.pack(">H", 0x0404) + b"\x00\x00" + struct.pack(">I", len(iim))
    resource += iim + (b"\x00" if len(iim) % 2 else b"")
    payload = b"Photoshop 3.0\x00" + resource
    return b"\xff\xed" + struct.pack(">H", len(payload) + 2) + payload


def app1_segment(payload: bytes) -> bytes:
    return b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload


def xmp_segment(packet: bytes) -> bytes:
    return app1_segment(b"http://ns.adobe.com/xap/1.0/\x00" + packet)


def exif_segment(tiff: bytes) -> bytes:
    return app1_segment(b"Exif\x00\x00" + tiff)


def photo_pixels(size: tuple[int, int], seed: int = 0) -> Image.Image:
    """Smooth colours with grain, so a JPEG of it costs what a photo costs to decode."""
    width, height = size
    rng = np.random.default_rng(seed)
    small = Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8))
    image = np.asarray(small.resize((width, height), Image.Resampling.BICUBIC), dtype=np.int16)
    noise = rng.normal(0, 4, (height, width, 1)).astype(np.int16)
    return Image.fromarray(np.clip(image + noise, 0, 255).astype(np.uint8))


def jpeg_bytes(
    *,
    exif: Image.Exif | bytes | None = None,
    xmp: bytes | None = None,
    segments: Iterable[bytes] = (),
    image: Image.Image | None = None,
) -> bytes:
    """A JPEG with the given EXIF (by Pillow), XMP (by Pillow) and raw segments after SOI."""
    buffer = io.BytesIO()
    params: dict = {"quality": 90}
    if exif is not None:
        params["exif"] = exif if isinstance(exif, bytes) else exif.tobytes()
    if xmp is not None:
        params["xmp"] = xmp
    (image or Image.new("RGB", (16, 12), (90, 140, 200))).save(buffer, "JPEG", **params)
    data = buffer.getvalue()
    return data[:2] + b"".join(segments) + data[2:]


def raw_exif(
    ifd0: list[tuple[int, int, int, bytes]], gps: list[tuple[int, int, int, bytes]]
) -> bytes:
    """Little-endian TIFF bytes with IFD0 and a GPS IFD built entry by entry, so a test can
    store what Pillow would refuse to write: (tag, TIFF type, count, value bytes)."""

    def layout(entries: list[tuple[int, int, int, bytes]], start: int) -> bytes:
        table_size = 2 + 12 * len(entries) + 4
        heap = b""
        table = struct.pack("<H", len(entries))
        for tag, kind, count, value in sorted(entries):
            if len(value) <= 4:
                table += struct.pack("<HHI", tag, kind, count) + value.ljust(4, b"\x00")
            else:
                table += struct.pack("<HHII", tag, kind, count, start + table_size + len(heap))
                heap += value + (b"\x00" if len(value) % 2 else b"")
        return table + struct.pack("<I", 0) + heap

    head = 8
    ifd0_size = len(layout([*ifd0, (GPS_IFD, 4, 1, b"\x00" * 4)], head))
    gps_at = head + ifd0_size
    first = layout([*ifd0, (GPS_IFD, 4, 1, struct.pack("<I", gps_at))], head)
    return b"II*\x00" + struct.pack("<I", head) + first + layout(gps, gps_at)
