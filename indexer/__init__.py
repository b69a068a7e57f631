"""The offline indexer: a photo folder into a library (SQLite + FAISS), incremental and crash-safe.

from indexer import IndexOptions, index_photos
summary = index_photos(Path("~/Pictures"), IndexOptions(batch_size=32))
"""

from indexer.pipeline import IndexOptions, index_photos
from indexer.setup import DEFAULT_MODEL
from indexer.summary import Summary

__all__ = ["DEFAULT_MODEL", "IndexOptions", "Summary", "index_photos"]
