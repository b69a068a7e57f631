"""The names and limits every layer shares, in one light module.

The command line builds its options from these (choices, defaults, help) without importing the
model, a runtime or FAISS: this module imports nothing heavy (koclip.errors at most).
"""

# The towers' arithmetic (`koclip.fast.precision`): auto picks bf16 where it runs, else fp32.
PRECISIONS = ("auto", "fp32", "bf16", "int8")
DEFAULT_PRECISION = "auto"
PRECISION_VARIABLE = "KOCLIP_PRECISION"


def check_precision(precision: str | None = None) -> str:
    """The precision asked for: `precision`, else $KOCLIP_PRECISION, else DEFAULT_PRECISION.
    One that is not in PRECISIONS raises PrecisionError (exit 2, HTTP 400) naming where it came
    from: the one check every command, the web and the Python API make."""
    import os

    from koclip.errors import PrecisionError

    if precision:
        where = "the precision asked for"
    else:
        precision = os.environ.get(PRECISION_VARIABLE) or DEFAULT_PRECISION
        where = f"${PRECISION_VARIABLE}"
    if precision not in PRECISIONS:
        raise PrecisionError(
            f"{where} is {precision!r}: a precision is one of {', '.join(PRECISIONS)}"
        )
    return precision


# The FAISS index types a library may hold (`db.vectors`); "auto" follows the library's size.
FLAT = "flat"
HNSW = "hnsw"
IVF_SQ8 = "ivf-sq8"
IVF_PQ = "ivf-pq"
INDEX_TYPES = (FLAT, HNSW, IVF_SQ8, IVF_PQ)
AUTO_INDEX = "auto"

# Duplicate groups (`search.duplicates`): identical files, the same picture in other renditions,
# shots of one moment.
DUPLICATE_KINDS = ("identical", "same", "similar")
# The embedding cosine above which two shots are "similar", unless the user gives one. To be
# calibrated on real weights (README, "Duplicates"): renditions of one photo score above ~0.9.
SIMILAR_COS = 0.90
# The lowest similar-shot cosine accepted (CLI, web, API alike): below it one "group" can chain
# most of a library together, and setting it aside would keep one photo of it.
MIN_SIMILAR_COS = 0.5

# The decompression-bomb guard of every decoder of library photos (the indexer's default
# --max-megapixels, uploads, thumbnails, query images, eval): 300 MB as RGB, so a photo the
# indexer took is one the web and eval may decode.
MAX_PIXELS = 100_000_000

# The largest photo file the indexer reads from an object store (storage.ObjectRoot.read): a
# bigger object is refused from its listed (or answered) size, before any of it is downloaded,
# so one read holds at most this much in memory.
MAX_PHOTO_BYTES = 256 * 1024 * 1024
