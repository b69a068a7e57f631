"""indexer.facts: a photo's metadata read into facts; bad metadata costs only its own field."""

from __future__ import annotations

import io
import math
import struct
import unicodedata
from datetime import datetime, timedelta, timezone

import pytest
from PIL import Image, PngImagePlugin
from PIL.TiffImagePlugin import IFDRational

from indexer.facts import (
    MAX_KEYWORDS,
    MAX_XMP_BYTES,
    PhotoFacts,
    iim_datasets,
    parse_xmp,
    read_facts,
)
from indexer.testing_facts import (
    exif_segment,
    gps_tags,
    iptc_segment,
    jpeg_bytes,
    make_exif,
    raw_exif,
    xmp_packet,
    xmp_segment,
)

# Pillow warns about the corrupt EXIF these tests feed it on purpose.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:PIL.TiffImagePlugin")

SEOUL = timezone(timedelta(hours=9))
RATIONAL_OK = struct.pack("<6I", 37, 1, 30, 1, 0, 1)  # 37° 30' 0"


def facts_of(data: bytes) -> PhotoFacts:
    with Image.open(io.BytesIO(data)) as image:
        return read_facts(image)


def gps_jpeg(gps: dict) -> bytes:
    return jpeg_bytes(exif=make_exif(gps=gps, make="Sony", model="ILCE-7M4"))


def test_every_fact_of_a_well_made_jpeg(tmp_path):
    data = jpeg_bytes(
        exif=make_exif(
            taken="2024:07:15 10:30:00",
            offset="+09:00",
            gps=gps_tags(33.4589, 126.9425, 12.5),
            make="Apple",
            model="iPhone 15",
            lens="iPhone 15 back camera 6mm f/1.6",
            xp_keywords="가족;여행",
        ),
        xmp=xmp_packet(["바다", "제주"], "성산일출봉 해돋이"),
        segments=[iptc_segment(["가족", "해돋이"], "IPTC 설명")],
    )
    path = tmp_path / "성산.jpg"
    path.write_bytes(data)
    facts = read_facts(path)
    assert facts.taken_at == datetime(2024, 7, 15, 10, 30, tzinfo=SEOUL)
    assert facts.lat == pytest.approx(33.4589, abs=1e-6)
    assert facts.lon == pytest.approx(126.9425, abs=1e-6)
    assert facts.altitude == pytest.approx(12.5)
    assert (facts.camera_make, facts.camera_model, facts.camera) == (
        "Apple",
        "iPhone 15",
        "Apple iPhone 15",
    )
    assert facts.lens == "iPhone 15 back camera 6mm f/1.6"
    # XMP first, then IPTC, then Windows tags; a keyword in two sources appears once
    assert facts.keywords == ("바다", "제주", "가족", "해돋이", "여행")
    assert facts.caption == "성산일출봉 해돋이"  # XMP's description wins over IPTC's
    assert facts.problems == ()
    assert facts.has_position
    assert read_facts(str(path)) == facts


def test_an_opened_image_is_read_without_decoding_and_left_open():
    data = jpeg_bytes(exif=make_exif(gps=gps_tags(37.5, 127.0)))
    with Image.open(io.BytesIO(data)) as image:
        facts = read_facts(image)
        assert image.tile, "read_facts must not decode the pixels"
        image.load()  # still usable by the caller
    assert facts.has_position


def test_south_west_below_sea_level_and_naive_time():
    data = jpeg_bytes(exif=make_exif(gps=gps_tags(-33.8688, -70.6693, -12.0)))
    facts = facts_of(data)
    assert facts.lat == pytest.approx(-33.8688, abs=1e-6)
    assert facts.lon == pytest.approx(-70.6693, abs=1e-6)
    assert facts.altitude == pytest.approx(-12.0)
    assert facts.taken_at == datetime(2024, 7, 15, 10, 30)  # no offset given: naive local time
    assert facts.taken_at.tzinfo is None


def test_camera_name_does_not_repeat_the_brand():
    facts = facts_of(jpeg_bytes(exif=make_exif(make="NIKON CORPORATION", model="NIKON D750")))
    assert facts.camera == "NIKON D750"
    facts = facts_of(jpeg_bytes(exif=make_exif(make="SAMSUNG", model="SM-S918N")))
    assert facts.camera == "SAMSUNG SM-S918N"
    assert facts_of(jpeg_bytes(exif=make_exif(model="X100V"))).camera == "X100V"


def test_a_photo_without_metadata_has_no_facts_and_no_problems():
    assert facts_of(jpeg_bytes()) == PhotoFacts()


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({2: (IFDRational(37, 0), IFDRational(0, 1), IFDRational(0, 1))}, "zero denominator"),
        ({2: (IFDRational(95, 1), IFDRational(0, 1), IFDRational(0, 1))}, "out of range"),
        ({4: (IFDRational(181, 1), IFDRational(0, 1), IFDRational(0, 1))}, "out of range"),
        ({2: (IFDRational(37, 1), IFDRational(75, 1), IFDRational(0, 1))}, "out of range"),
        ({1: "X"}, "reference"),
    ],
)
def test_garbage_gps_means_no_position_and_costs_nothing_else(change, reason):
    facts = facts_of(gps_jpeg({**gps_tags(37.5, 127.0), **change}))
    assert (facts.lat, facts.lon, facts.altitude) == (None, None, None)
    assert any(p.startswith("gps:") and reason in p for p in facts.problems), facts.problems
    assert facts.camera == "Sony ILCE-7M4"
    assert facts.taken_at == datetime(2024, 7, 15, 10, 30)


def test_a_missing_hemisphere_reference_means_no_position():
    tags = gps_tags(37.5, 127.0)
    del tags[3]
    facts = facts_of(gps_jpeg(tags))
    assert not facts.has_position
    assert any("E/W reference" in p for p in facts.problems)


def test_null_island_is_no_position():
    facts = facts_of(gps_jpeg(gps_tags(0.0, 0.0)))
    assert not facts.has_position
    assert facts.problems == ("gps: (0, 0) placeholder",)


def test_nan_and_text_where_rationals_belong():
    nan = struct.pack("<3d", math.nan, 0.0, 0.0)  # DOUBLEs: Pillow would refuse to write these
    for latitude in [(12, 3, nan), (2, 5, b"37.5\x00")]:
        tiff = raw_exif(
            [(0x010F, 2, 5, b"Sony\x00")],
            [(1, 2, 2, b"N\x00"), (2, *latitude), (3, 2, 2, b"E\x00"), (4, 5, 3, RATIONAL_OK)],
        )
        facts = facts_of(jpeg_bytes(segments=[exif_segment(tiff)]))
        assert not facts.has_position
        assert [p for p in facts.problems if p.startswith("gps:")], facts.problems
        assert facts.camera_make == "Sony"


def test_a_bad_altitude_keeps_the_position():
    tags = {**gps_tags(37.5, 127.0), 6: IFDRational(5, 0)}
    facts = facts_of(gps_jpeg(tags))
    assert facts.has_position and facts.altitude is None


def test_wrong_types_cost_their_own_field_only():
    tiff = raw_exif(
        [(0x010F, 3, 1, b"\x05\x00"), (0x0110, 2, 6, b"Model\x00")],  # Make as a SHORT
        [(1, 2, 2, b"N\x00"), (2, 5, 3, RATIONAL_OK), (3, 2, 2, b"E\x00"), (4, 5, 3, RATIONAL_OK)],
    )
    facts = facts_of(jpeg_bytes(segments=[exif_segment(tiff)]))
    assert facts.camera_make is None and facts.camera_model == "Model"
    assert facts.problems == ("camera: not text (int)",)
    assert (facts.lat, facts.lon) == (37.5, 37.5)


@pytest.mark.parametrize(
    ("taken", "expected", "problem"),
    [
        ("2024:13:45 10:00:00", None, "taken_at: not an EXIF date"),
        ("0000:00:00 00:00:00", None, None),  # an unset clock: absent, not a problem
        ("    :  :     :  :  ", None, None),  # the standard's "unknown"
        ("2024-07-15T10:30:00", datetime(2024, 7, 15, 10, 30), None),
        ("작년 여름", None, "taken_at: not an EXIF date"),
        ("2023:09:29 18:00:00\x00", datetime(2023, 9, 29, 18), None),
    ],
)
def test_dates(taken, expected, problem):
    facts = facts_of(jpeg_bytes(exif=make_exif(taken=taken)))
    assert facts.taken_at == expected
    taken_problems = [p for p in facts.problems if p.startswith("taken_at")]
    if problem is None:
        assert taken_problems == []
    else:
        assert len(taken_problems) == 1 and taken_problems[0].startswith(problem)


def test_a_bad_offset_keeps_the_local_time():
    facts = facts_of(jpeg_bytes(exif=make_exif(offset="+99:99")))
    assert facts.taken_at == datetime(2024, 7, 15, 10, 30)


def test_exif_loops_and_truncation_never_raise():
    loop_ifd = (
        struct.pack("<H", 3)
        + struct.pack("<HHI4s", 0x010F, 2, 4, b"Sony")
        + struct.pack("<HHII", 0x8769, 4, 1, 8)  # the Exif IFD is IFD0 itself
        + struct.pack("<HHII", 0x8825, 4, 1, 8)  # and so is the GPS IFD
        + struct.pack("<I", 8)  # and the next IFD too
    )
    facts = facts_of(
        jpeg_bytes(segments=[exif_segment(b"II*\x00" + struct.pack("<I", 8) + loop_ifd)])
    )
    assert not facts.has_position and facts.taken_at is None

    whole = make_exif(gps=gps_tags(37.5, 127.0), make="Canon", model="Canon EOS R5").tobytes()
    for cut in range(0, len(whole), 7):
        facts = facts_of(jpeg_bytes(segments=[exif_segment(whole[:cut])]))
        assert not facts.has_position
    half = facts_of(jpeg_bytes(segments=[exif_segment(whole[: len(whole) // 2])]))
    assert half.camera_model == "Canon EOS R5"  # what was whole is kept
    assert "gps: unreadable (truncated or invalid)" in half.problems


def test_random_exif_never_raises():
    import random

    rng = random.Random(21)
    for _ in range(200):
        junk = bytes(rng.randrange(256) for _ in range(rng.randrange(8, 300)))
        facts = facts_of(jpeg_bytes(segments=[exif_segment(b"II*\x00\x08\x00\x00\x00" + junk)]))
        assert isinstance(facts, PhotoFacts)


def test_a_file_that_is_not_an_image(tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_bytes(b"not a jpeg at all")
    facts = read_facts(path)
    assert facts.problems == ("file: cannot open (UnidentifiedImageError)",)
    assert read_facts(tmp_path / "missing.jpg").problems == (
        "file: cannot open (FileNotFoundError)",
    )


# -- XMP --------------------------------------------------------------------------------------


def png_with_xmp(packet: bytes, exif: Image.Exif | None = None) -> bytes:
    info = PngImagePlugin.PngInfo()
    info.add_itxt("XML:com.adobe.xmp", packet.decode("utf-8"), zip=False)
    buffer = io.BytesIO()
    params = {"pnginfo": info}
    if exif is not None:
        params["exif"] = exif.tobytes()
    Image.new("RGB", (8, 8)).save(buffer, "PNG", **params)
    return buffer.getvalue()


def test_ten_megabytes_of_xmp_are_refused_unparsed():
    big = xmp_packet(["바다"]).replace(b"</x:xmpmeta>", b" " * (10 << 20) + b"</x:xmpmeta>")
    facts = facts_of(png_with_xmp(big, exif=make_exif(make="Sony")))
    assert facts.keywords == ()
    assert facts.problems == (f"xmp: too large (10.0 MB, limit {MAX_XMP_BYTES} bytes)",)
    assert facts.camera_make == "Sony"  # the rest of the photo's facts stand

    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, "TIFF", tiffinfo={700: big})
    assert facts_of(buffer.getvalue()).problems[0].startswith("xmp: too large")


def test_xmp_of_png_and_tiff_is_read():
    packet = xmp_packet(["서울", "야경"], "남산타워")
    assert facts_of(png_with_xmp(packet)).keywords == ("서울", "야경")
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, "TIFF", tiffinfo={700: packet})
    assert facts_of(buffer.getvalue()).caption == "남산타워"


BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol1 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol2 "&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
 <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
 <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
 <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
 <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
 <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]>
<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">
<rdf:Description xmlns:dc="http://purl.org/dc/elements/1.1/">
<dc:subject><rdf:Bag><rdf:li>&lol9;</rdf:li></rdf:Bag></dc:subject>
</rdf:Description></rdf:RDF></x:xmpmeta>"""


def test_a_billion_laughs_never_expands():
    facts = facts_of(jpeg_bytes(xmp=BILLION_LAUGHS, exif=make_exif(make="Sony")))
    assert facts.keywords == ()
    assert facts.problems == ("xmp: refused (DTDForbidden)",)
    assert facts.camera_make == "Sony"


def test_an_external_entity_never_reads_a_local_file(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET-비밀")
    packet = (
        f'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY e SYSTEM "file://{secret}">]>'
        '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF '
        'xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"><rdf:Description '
        'xmlns:dc="http://purl.org/dc/elements/1.1/"><dc:subject><rdf:Bag><rdf:li>&e;</rdf:li>'
        "</rdf:Bag></dc:subject></rdf:Description></rdf:RDF></x:xmpmeta>"
    ).encode()
    facts = facts_of(jpeg_bytes(xmp=packet))
    assert "SECRET" not in repr(facts)
    assert facts.keywords == () and facts.problems == ("xmp: refused (DTDForbidden)",)


def test_malformed_and_deep_xmp():
    facts = facts_of(jpeg_bytes(xmp=b"<x:xmpmeta><rdf:RDF>unclosed", exif=make_exif(make="Sony")))
    assert facts.problems == ("xmp: not well-formed XML",) and facts.camera_make == "Sony"
    deep = b"<a>" * 100_000 + b"</a>" * 100_000  # 700 kB of nesting, under the size bound
    assert parse_xmp(deep).problems in ((), ("xmp: nested too deep",))


def test_xmp_languages_attributes_and_nfc():
    nfd = unicodedata.normalize("NFD", "가족")
    packet = (
        '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF '
        'xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        '<rdf:Description xmlns:dc="http://purl.org/dc/elements/1.1/">'
        f"<dc:subject><rdf:Bag><rdf:li>{nfd}</rdf:li><rdf:li> 가족 </rdf:li><rdf:li></rdf:li>"
        "<rdf:li>Sea\tside</rdf:li></rdf:Bag></dc:subject>"
        '<dc:description><rdf:Alt><rdf:li xml:lang="en">Sunrise</rdf:li>'
        '<rdf:li xml:lang="x-default">해돋이</rdf:li></rdf:Alt></dc:description>'
        "</rdf:Description></rdf:RDF></x:xmpmeta>"
    ).encode()
    parsed = parse_xmp(packet)
    assert parsed.keywords == ("가족", "Sea side")
    assert parsed.caption == "해돋이"


def test_xmp_in_its_own_app1_segment_and_bad_iptc_text():
    data = jpeg_bytes(
        segments=[xmp_segment(xmp_packet(["꽃"])), iptc_segment(["벚꽃"], "봄 나들이", utf8=False)]
    )
    facts = facts_of(data)
    assert facts.keywords == ("꽃", "벚꽃")  # the IPTC in CP949, as older Korean tools wrote
    assert facts.caption == "봄 나들이"


def test_place_names_written_by_people():
    xmp = xmp_packet(["바다"], city="서귀포", country="대한민국")
    facts = facts_of(jpeg_bytes(xmp=xmp, segments=[iptc_segment(["꽃"], city="제주")]))
    assert facts.place_names == ("대한민국", "서귀포")  # XMP's, broad to narrow
    assert facts.keywords == ("바다", "꽃")
    facts = facts_of(jpeg_bytes(segments=[iptc_segment(city="제주시")]))
    assert facts.place_names == ("제주시",)  # IPTC's when XMP has none


def test_keywords_are_bounded():
    facts = facts_of(jpeg_bytes(xmp=xmp_packet([f"k{i}" for i in range(1000)] + ["x" * 500])))
    assert len(facts.keywords) == MAX_KEYWORDS
    assert facts.keywords[:2] == ("k0", "k1")


def test_unreadable_names_the_fields_with_problems():
    tags = {**gps_tags(37.5, 127.0), 2: (IFDRational(37, 0), IFDRational(0, 1), IFDRational(0, 1))}
    data = jpeg_bytes(exif=make_exif(gps=tags, taken="2024:99:99 00:00:00"), xmp=BILLION_LAUGHS)
    assert set(facts_of(data).unreadable) == {"gps", "taken_at", "xmp"}


def test_the_decoded_copy_the_indexer_holds_keeps_every_fact(tmp_path):
    from koclip.images.preprocess import open_image

    data = jpeg_bytes(
        exif=make_exif(gps=gps_tags(33.4589, 126.9425), make="Apple", model="iPhone 15"),
        xmp=xmp_packet(["바다"], "해돋이"),
        segments=[iptc_segment(["가족"], city="서귀포")],
        image=Image.new("RGB", (64, 48), (10, 20, 30)),
    )
    path = tmp_path / "a.jpg"
    path.write_bytes(data)
    assert read_facts(open_image(path)) == read_facts(path)


def test_iim_garbage_and_truncation_keep_what_came_before():
    whole = iptc_segment(["하나", "둘"], "설명")
    iim = whole[whole.index(b"\x1c") :]
    assert iim_datasets(iim)[(2, 25)] == ["하나".encode(), "둘".encode()]
    for cut in range(len(iim)):
        datasets = iim_datasets(iim[:cut])
        assert all(isinstance(v, bytes) for values in datasets.values() for v in values)
    assert iim_datasets(b"\x1c\x02\x19\x80\x09" + b"\xff" * 20) == {}  # a 9-byte length
    assert iim_datasets(b"\x1c\x02\x19\xff\xff") == {}
    facts = facts_of(jpeg_bytes(segments=[iptc_segment(["하나", "둘"], "설명", cut=3)]))
    assert facts.keywords == ("하나", "둘") and facts.caption is None
