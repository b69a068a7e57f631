"""The request values every route shares, each validated in one place.

`PhotoId` is a library id as SQLite can hold it, so no id reaches the database as an
OverflowError; `Text` is any string that goes on to search (query, folder, dates, tokens,
composed terms), refused when it holds a NUL character or a lone surrogate or is longer than
MAX_TEXT characters: one cap for every text a request carries, in a URL or a JSON body.
Both fail as 422 `bad_request`.
"""

from __future__ import annotations

from typing import Annotated

import annotated_types
from pydantic import AfterValidator

from search import text_problem

# SQLite's INTEGER is a signed 64-bit number; library ids start at 1.
MAX_PHOTO_ID = 2**63 - 1
# Characters of any one text a request carries (a query, a composed term, a folder, a date...).
MAX_TEXT = 1000


def _searchable(value: str) -> str:
    problem = text_problem(value)
    if problem is not None:
        raise ValueError(problem)
    return value


PhotoId = Annotated[int, annotated_types.Interval(ge=1, le=MAX_PHOTO_ID)]
Text = Annotated[str, annotated_types.MaxLen(MAX_TEXT), AfterValidator(_searchable)]
