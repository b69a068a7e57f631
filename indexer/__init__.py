"""The offline indexer: a photo folder into a library (SQLite + FAISS), incremental and crash-safe.

from indexer import IndexOptions, index_photos
summary = index_photos(Path("~/Pictures"), IndexOptions(batch_size=32))
watch(Path("~/Pictures"))      # then keep it current until Ctrl-C
"""

from indexer.pipeline import (
    IndexOptions,
    IndexSession,
    PhotosGoneError,
    UnknownExcludeError,
    UrlRootError,
    index_photos,
)
from indexer.ray_executor import ClusterError, ClusterSetupError, RayOptions
from indexer.setup import DEFAULT_MODEL
from indexer.summary import Summary
from indexer.watcher import Debouncer, WatchOptions, WatchThread, watch
from indexer.writer import IndexRebuild

__all__ = [
    "ClusterError",
    "ClusterSetupError",
    "DEFAULT_MODEL",
    "Debouncer",
    "IndexOptions",
    "IndexRebuild",
    "IndexSession",
    "PhotosGoneError",
    "RayOptions",
    "Summary",
    "UnknownExcludeError",
    "UrlRootError",
    "WatchOptions",
    "WatchThread",
    "index_photos",
    "watch",
]
