"""A photo's place in an object store as the search results carry it."""

from __future__ import annotations


class ObjectPath(str):
    """An object's URL ("s3://bucket/prefix/2024/a.jpg") that joins like a Path (`root / rel`)
    and names its last part, so code that builds result paths from a library's root works
    for both kinds of root. It is text, not a local path (no os.PathLike): read the object
    through `storage.open_root(...)`."""

    __slots__ = ()

    def __truediv__(self, relpath: object) -> ObjectPath:
        """The object at `relpath` under this one; a URL or an absolute path on the right
        stands for itself, as an absolute path does for a Path (and is then no object of
        this root: search.filters.relative_to_root says None)."""
        if "://" in str(relpath) or str(relpath).startswith("/"):
            return ObjectPath(str(relpath))
        rel = str(relpath).strip("/")
        return ObjectPath(f"{self.rstrip('/')}/{rel}" if rel else str(self))

    @property
    def name(self) -> str:
        return self.rstrip("/").rsplit("/", 1)[-1]

    @property
    def suffix(self) -> str:
        name = self.name
        dot = name.rfind(".")
        return name[dot:] if dot > 0 else ""

    def as_posix(self) -> str:
        return str(self)
