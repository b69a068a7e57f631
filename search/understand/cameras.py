"""Camera words: brand names in Korean and English, and the library's own makes and models.

A camera word finds the library's cameras (EXIF make, model) it names: a brand (아이폰 /
iPhone: make Apple, model with "iPhone"; 소니 / Sony: make SONY; 갤럭시: make samsung), a make
as the library spells it, or a model as written (iPhone 13 Pro, ILCE-7M3). It filters only
when the library has such a camera.
"""

from __future__ import annotations

from collections.abc import Iterable

from search.understand.places import key

Camera = tuple[str, str]  # (make, model) as the library stores them

# (words, label, make contains, model contains); matched case-insensitively.
# fmt: off
BRANDS: tuple[tuple[tuple[str, ...], str, str, str], ...] = (
    (("아이폰", "iphone"), "iPhone", "apple", "iphone"),
    (("아이패드", "ipad"), "iPad", "apple", "ipad"),
    (("애플", "apple"), "Apple", "apple", ""),
    (("갤럭시", "galaxy", "갤폰"), "Galaxy", "samsung", ""),
    (("삼성", "samsung"), "Samsung", "samsung", ""),
    (("소니", "sony"), "Sony", "sony", ""),
    (("캐논", "canon"), "Canon", "canon", ""),
    (("니콘", "nikon"), "Nikon", "nikon", ""),
    (("후지", "후지필름", "fuji", "fujifilm"), "Fujifilm", "fujifilm", ""),
    (("라이카", "leica"), "Leica", "leica", ""),
    (("올림푸스", "olympus"), "Olympus", "olympus", ""),
    (("파나소닉", "루믹스", "panasonic", "lumix"), "Panasonic", "panasonic", ""),
    (("리코", "ricoh"), "Ricoh", "ricoh", ""),
    (("펜탁스", "pentax"), "Pentax", "pentax", ""),
    (("픽셀폰", "구글 픽셀", "google pixel"), "Pixel", "google", "pixel"),
    (("고프로", "gopro"), "GoPro", "gopro", ""),
    (("디제이아이", "dji"), "DJI", "dji", ""),
    (("샤오미", "xiaomi"), "Xiaomi", "xiaomi", ""),
    (("화웨이", "huawei"), "Huawei", "huawei", ""),
    (("엘지", "lg"), "LG", "lg", ""),
    (("핫셀블라드", "hasselblad"), "Hasselblad", "hasselblad", ""),
    (("시그마", "sigma"), "Sigma", "sigma", ""),
)
# fmt: on

MAX_WORDS = 4  # a model name such as "iPhone 13 Pro Max"


class CameraIndex:
    """The library's cameras and the words that find them; built once per library."""

    def __init__(self, rows: Iterable[tuple[str, str, int]]) -> None:
        counts: dict[Camera, int] = {}
        for make, model, count in rows:
            make, model = (make or "").strip(), (model or "").strip()
            if count > 0 and (make or model):
                counts[(make, model)] = counts.get((make, model), 0) + int(count)
        self.counts = counts
        lookup: dict[str, tuple[str, set[Camera]]] = {}
        for words, name, make_has, model_has in BRANDS:
            found = {
                cam
                for cam in counts
                if make_has in cam[0].casefold() and model_has in cam[1].casefold()
            }
            if found:
                for word in words:
                    lookup[key(word)] = (name, found)
        # The library's own spellings: a model (iPhone 13 Pro), a make (NIKON CORPORATION).
        own: dict[str, tuple[str, set[Camera]]] = {}
        for cam in counts:
            for word in cam:
                if word:
                    own.setdefault(key(word), (word, set()))[1].add(cam)
        for word, hit in own.items():
            lookup.setdefault(word, hit)  # a brand word keeps its wider meaning
        self._lookup = lookup

    def find(self, word: str) -> tuple[str, tuple[Camera, ...]] | None:
        """The label and the library's cameras `word` names, or None."""
        hit = self._lookup.get(key(word))
        if hit is None:
            return None
        return hit[0], tuple(sorted(hit[1]))

    def __len__(self) -> int:
        return len(self.counts)
