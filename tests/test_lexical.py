"""The lexical half of a search (db.lexical): file names, folders, keywords and captions matched
inside Hangul words by FTS5 trigrams (LIKE for two-syllable words), ranked by rarity, and
fused with another ranking by reciprocal rank."""

from __future__ import annotations

import pytest
from sqlalchemy import create_engine
from sqlalchemy.orm import Session

from db import lexical
from db.lexical import PhotoWords


@pytest.fixture
def session():
    engine = create_engine("sqlite://")
    with Session(engine) as s, s.begin():
        lexical.create_table(s)
        lexical.put(
            s,
            [
                PhotoWords.of(1, "2024 여행/제주_성산일출봉.jpg", keywords=["가족", "바다"]),
                PhotoWords.of(2, "camera/IMG_0001.JPG"),
                PhotoWords.of(3, "가족사진/돌잔치.jpg", caption="첫 돌 잔치"),
                PhotoWords.of(4, "camera/IMG_0002.JPG", place="제주특별자치도 서귀포시"),
                PhotoWords.of(5, "camera/IMG_0003.JPG"),
            ],
        )
        yield s


def ids(ranked):
    return [photo_id for photo_id, _ in ranked]


def test_words_inside_hangul_names_are_found(session):
    assert ids(lexical.ranking(session, ["일출봉"])) == [1]  # three syllables: the index
    assert set(ids(lexical.ranking(session, ["가족"]))) == {1, 3}  # two: LIKE
    assert ids(lexical.ranking(session, ["img_0002"])) == []  # "_" is a separator, not a word
    assert ids(lexical.ranking(session, ["0002"])) == [4]
    assert ids(lexical.ranking(session, ["서귀포"])) == [4]
    assert ids(lexical.ranking(session, ["잔치"])) == [3]


def test_rare_words_outweigh_common_ones_and_ubiquitous_words_say_nothing(session):
    ranked = ids(lexical.ranking(session, ["camera", "0003"]))
    assert ranked[0] == 5 and set(ranked) == {2, 4, 5}
    assert lexical.ranking(session, ["jpg"]) == []  # every name has it? no: stems only
    assert lexical.ranking(session, []) == []


def test_query_words_are_split_like_names(session):
    assert lexical.query_words("제주 성산일출봉, 가족-사진 a") == [
        "제주",
        "성산일출봉",
        "가족",
        "사진",
    ]
    assert len(lexical.query_words(" ".join(f"w{i:02d}" for i in range(40)))) == lexical.MAX_WORDS


def test_patterns_in_words_are_literal(session):
    assert lexical.ranking(session, ["%%"]) == []
    assert lexical.ranking(session, ['"일출']) == []  # a quote does not break the MATCH


def test_put_replaces_and_forget_removes(session):
    lexical.put(session, [PhotoWords.of(1, "a/바다.jpg")])
    assert ids(lexical.ranking(session, ["일출봉"])) == []
    assert ids(lexical.ranking(session, ["바다"])) == [1]
    lexical.forget(session, [1])
    assert lexical.ranking(session, ["바다"]) == []


def test_reciprocal_rank_fusion():
    fused = ids(lexical.fuse([1, 2, 3], [3, 4]))
    assert fused[0] == 3  # in both lists
    assert set(fused) == {1, 2, 3, 4}
    assert ids(lexical.fuse([1, 2, 3], [])) == [1, 2, 3]  # nothing lexical: unchanged order


def test_short_words_and_the_count_read_fts5s_own_copy_as_the_table_answers(session):
    """Two-letter words and the table's size are read from FTS5's content table (quicker than
    through the virtual table): the same rows as a LIKE over the virtual table, ASCII case
    folded alike, and the same count, also after words are replaced and forgotten."""
    from sqlalchemy import text

    lexical.put(session, [PhotoWords.of(6, "Ca/가족_GA%.jpg", keywords=["ga_"])])
    lexical.forget(session, [5])
    where = " OR ".join(f"{c} LIKE :p ESCAPE '\\'" for c in lexical.COLUMNS)
    for word in ("가족", "ca", "CA", "ga", "%", "_", "0", "img", "없음"):
        pattern = "%" + word.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        found = session.execute(
            text(f"SELECT rowid FROM {lexical.TABLE} WHERE {where}"), {"p": pattern}
        )
        assert sorted(lexical._ids_with(session, word)) == sorted(r[0] for r in found), word
    count = session.execute(text(f"SELECT count(*) FROM {lexical.TABLE}")).scalar()
    assert count == 5
    assert set(ids(lexical.ranking(session, ["ca"]))) == {2, 4, 6}  # camera x2, Ca
