"""Search a library: Korean (or English) text, photos, or composed queries, to ranked photos.

from search import Searcher
with Searcher("~/Pictures") as searcher:
    results = searcher.compose("바다 + 노을 - 사람", k=10, after="2023-05")
    for hit in results:
        print(hit.rank, f"{hit.score:.3f}", hit.path)
"""

from search.encode import QueryEncoder
from search.errors import (
    DateError,
    ModelMismatchError,
    QueryError,
    QueryImageError,
    SearchError,
)
from search.library import LibraryInfo, find_library
from search.query import Term, parse_query, text_problem
from search.reindex import ReindexReport, reindex
from search.results import (
    PhotoInfo,
    SearchHit,
    SearchResults,
    display_path,
    facts_json,
    json_path,
)
from search.searcher import ImageRequest, Searcher, SearchOptions, TextRequest
from search.understand import Understood

__all__ = [
    "DateError",
    "ImageRequest",
    "LibraryInfo",
    "ModelMismatchError",
    "PhotoInfo",
    "QueryEncoder",
    "QueryError",
    "QueryImageError",
    "ReindexReport",
    "SearchError",
    "SearchHit",
    "SearchOptions",
    "SearchResults",
    "Searcher",
    "Understood",
    "Term",
    "TextRequest",
    "display_path",
    "facts_json",
    "find_library",
    "json_path",
    "parse_query",
    "reindex",
    "text_problem",
]
