"""Query understanding: dates, places and cameras in a Korean (or English) query box.

    from datetime import date
    from search.understand import Vocabulary, understand

    vocabulary = Vocabulary.build(
        places=[(("제주특별자치도", "서귀포시", "성산읍"), 12), (("일본", "도쿄"), 3)],
        cameras=[("Apple", "iPhone 13 Pro", 40)],
    )
    u = understand("작년 여름 제주 바다", today=date(2026, 12, 7), vocabulary=vocabulary)
    u.describe()  # 'understood: 2025-06-01–2025-08-31 · 제주특별자치도 · 바다'

`dates.py` reads dates, `places.py` and `cameras.py` hold the library's names, `words.py` the
particles and filler, `engine.py` puts them together. Nothing here imports more than the
standard library and `search.errors`.
"""

from search.understand.engine import Fact, Understood, Vocabulary, understand

__all__ = ["Fact", "Understood", "Vocabulary", "understand"]
