"""Query parsing: composed queries such as `바다 + 노을 - 사람`, `2:강아지` and image-path terms."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import db
from db import IMAGE_SUFFIXES
from koclip.images.preprocess import nfc
from search.errors import QueryError

_OPERATORS = {"+": 1.0, "-": -1.0}
_WEIGHT = re.compile(r"^([+-]?(?:\d+(?:\.\d*)?|\.\d+)):(.+)$", re.DOTALL)
# How an image given as pixels (not a path) is echoed when the caller gives it no label.
IMAGE_LABEL = "<image>"


@dataclass(frozen=True)
class Term:
    """One weighted term of a query: exactly one of `text` (NFC) or `image` (a path or PIL
    image); `label` names an in-memory image when the query is echoed (an upload's file name)."""

    weight: float = 1.0
    text: str | None = None
    image: Any = None
    label: str | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if (self.text is None) == (self.image is None):
            raise ValueError("a Term has exactly one of text or image")
        if self.text is not None:
            check_text(self.text, "the query text")
        elif isinstance(self.image, (str, os.PathLike)) and "\0" in os.fspath(self.image):
            # A file name may be any bytes but NUL (undecodable ones arrive as surrogates).
            raise QueryError(
                f"the image path {_short(os.fspath(self.image))!r} holds a NUL character"
            )

    @property
    def is_text(self) -> bool:
        """True for a text term."""
        return self.text is not None

    def describe(self) -> str:
        """The term as a user would write it, for echoing queries back."""
        if self.text is not None:
            body = self.text
        elif self.label:
            body = self.label
        elif isinstance(self.image, (str, os.PathLike)):
            body = db.path_key(os.fspath(self.image))  # NFC, undecodable bytes as \xNN
        else:  # pixels: a file's name when PIL kept one, never the object's repr
            body = str(getattr(self.image, "filename", "") or IMAGE_LABEL)
        return body if self.weight == 1.0 else f"{self.weight:g}:{body}"


def text_problem(text: str) -> str | None:
    """Why `text` cannot be part of a query (a NUL character, or a lone surrogate: bytes that
    were not UTF-8), or None when it can. Every string that reaches search is checked by it."""
    if "\0" in text:
        return "it holds a NUL character"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "it is not valid Unicode (a lone surrogate, e.g. bytes that are not UTF-8)"
    return None


def check_text(text: str, what: str) -> str:
    """`text` itself, or QueryError naming `what` and why it cannot be searched."""
    problem = text_problem(text)
    if problem is not None:
        raise QueryError(f"{what} {_short(text)!r}: {problem}")
    return text


def _short(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def looks_like_image(token: str, files: bool = True) -> bool:
    """True if `token` names an image: an image suffix (a term is an image path even before
    anything is looked up, so a mistyped path is reported as unreadable rather than searched
    as text), or (`files`) a path with a separator that is a file."""
    if Path(token).suffix.lower() in IMAGE_SUFFIXES:
        return True
    if not files:
        return False
    # A bare word is text even if a file of that name sits in the cwd: `바다` must not
    # turn into an image query because someone has a file called 바다 there.
    has_sep = os.sep in token or (os.altsep is not None and os.altsep in token)
    return has_sep and os.path.isfile(token)


def _split_weight(token: str) -> tuple[float, str]:
    match = _WEIGHT.match(token)
    if not match:
        return 1.0, token
    return float(match.group(1)), match.group(2)


def _items(args: Sequence[str], files: bool) -> list[tuple[str, Any]]:
    """Turn argv items into ('op', sign), ('image', token) and ('text', [words]) items."""
    out: list[tuple[str, Any]] = []
    for arg in args:
        # An argv item naming an existing file stays one item: paths may contain spaces.
        whole = os.path.expanduser(_split_weight(arg.strip())[1])
        if files and looks_like_image(whole) and os.path.isfile(whole):
            out.append(("image", arg.strip()))
            continue
        for word in arg.split():
            if word in _OPERATORS:
                out.append(("op", _OPERATORS[word]))
            elif looks_like_image(_split_weight(word)[1], files):
                out.append(("image", word))
            elif out and out[-1][0] == "text":
                out[-1][1].append(word)
            else:
                out.append(("text", [word]))
    return out


def _make_term(sign: float, kind: str, value: Any) -> Term:
    if kind == "image":
        weight, path = _split_weight(value)
        return Term(weight=sign * weight, image=Path(path).expanduser())
    weight, first = _split_weight(value[0])
    return Term(weight=sign * weight, text=nfc(" ".join([first, *value[1:]])))


def parse_query(query: str | Sequence[str], *, files: bool = True) -> list[Term]:
    """Parse a query into weighted terms.

    Terms are separated by a lone `+` or `-` (a leading `-` negates the first term); `W:term`
    sets a weight (`2:강아지`, `- 0.5:사람`); a term with an image suffix, or a path to a file,
    is an image term. Words with no operator between them form one phrase, so
    `search 푸른 바다` == `search "푸른 바다"`; two image terms side by side are added.
    With `files=False` (queries from the web) only the suffix makes an image term: the file
    system is never consulted.
    """
    args = [query] if isinstance(query, str) else list(query)
    terms: list[Term] = []
    sign: float | None = None
    for kind, value in _items(args, files):
        if kind == "op":
            if sign is not None:
                raise QueryError("two operators in a row")
            sign = value
            continue
        terms.append(_make_term(1.0 if sign is None else sign, kind, value))
        sign = None
    if not terms:
        raise QueryError("the query is empty")
    if sign is not None:
        raise QueryError("the query ends with an operator")
    if all(t.weight == 0 for t in terms):
        raise QueryError("every term has weight 0")
    return terms


def describe(terms: Sequence[Term]) -> str:
    """Render terms back to one line (`바다 + 노을 - 사람`), for echoing a query."""
    parts: list[str] = []
    for i, term in enumerate(terms):
        if i or term.weight < 0:
            parts.append("-" if term.weight < 0 else "+")
        magnitude = replace(term, weight=abs(term.weight))
        parts.append(magnitude.describe())
    return " ".join(parts)
