"""Words around facts: the particles that attach to a fact, and the filler that only joined it.

Korean particles are suffixes of the word they follow (부산에서, 제주의, 일본으로); a fact word
is tried as typed first, then with one particle stripped, so 제주도 stays the place's name and
is never read as 제주 + 도.
"""

from __future__ import annotations

import re

# Longest first: 에서는 must be tried before 에서 and 에.
# fmt: off
PARTICLES: tuple[str, ...] = tuple(
    sorted(
        {
            "에서는", "에서의", "에서도", "에서만", "에서", "으로의", "으로는", "으로", "로의", "로는",
            "로", "에는", "에도", "에만", "에의", "에", "의", "엔", "은", "는", "이", "가", "을",
            "를", "도", "만", "이랑", "랑", "와", "과", "쯤에", "쯤", "경에", "경", "께", "즈음",
            "무렵", "동안", "때", "때의", "중에", "에선", "서", "'s", "’s",
        },
        key=len,
        reverse=True,
    )
)

# Particles that also end ordinary words (설경, 강서): stripped only when two or more
# characters are left (5월경 -> 5월, but 설경 stays a snowy landscape).
_LONG_ONLY = frozenset({"경", "경에", "께", "쯤", "쯤에", "즈음", "무렵", "때", "때의", "동안",
                        "중에", "서"})  # fmt: skip

# Words after a fact that only joined it to the query (dropped when they follow a fact).
AFTER_FACT: frozenset[str] = frozenset(
    {
        "찍은", "찍었던", "찍힌", "찍은거", "찍었을", "촬영한", "촬영된", "촬영", "사진", "사진들",
        "사진만", "사진을", "사진은", "에서", "에", "의", "으로", "로", "에서의", "때", "때의",
        "당시", "쯤", "즈음", "무렵", "동안", "카메라", "카메라로", "photos", "photo", "pictures",
        "picture", "pics",
    }
)
# fmt: on

# English words before a fact that only joined it ("photos taken in Tokyo", "shot on iPhone").
# fmt: off
BEFORE_FACT: frozenset[str] = frozenset(
    {
        "in", "at", "from", "on", "during", "of", "with", "using", "by", "taken", "shot",
        "photos", "photo", "pictures", "picture", "pics",
    }
)
# fmt: on

# A token that names a file or carries a weight is never a fact word.
_PATHLIKE = re.compile(r"[/\\]|\.[A-Za-z][A-Za-z0-9]{1,4}$")
WEIGHT = re.compile(r"^([+-]?(?:\d+(?:\.\d*)?|\.\d+)):(.+)$", re.DOTALL)
OPERATORS = frozenset({"+", "-"})

# Fact words are short: a longer token is never looked at (keeps a pasted essay linear).
MAX_WORD = 40


def variants(word: str) -> list[str]:
    """`word` as typed, then with one particle stripped (longest particle first), when
    something is left (two characters for the particles in _LONG_ONLY)."""
    out = [word]
    for particle in PARTICLES:
        left = len(word) - len(particle)
        if word.endswith(particle) and left >= (2 if particle in _LONG_ONLY else 1):
            out.append(word[: -len(particle)])
    return out


def is_plain(token: str) -> bool:
    """True when `token` may be part of a fact: not an operator, a weight, or a path."""
    return (
        token not in OPERATORS
        and len(token) <= MAX_WORD
        and not WEIGHT.match(token)
        and not _PATHLIKE.search(token)
    )
