"""The one way to load batch encoders (`load_encoder`), and the rule for which towers it runs.

Three feature backends can sit behind `koclip.encoder.Encoder`: the jitted fp32 towers
(`koclip.api`), the numpy fp32 towers (`koclip.fast.numpy_encoder`) and a fast path's graphs
(`koclip.fast.precision`: bf16 or int8). The loader chooses among them, once for every caller
(the indexer, its Ray workers, queries, eval, the Python API):

* the precision asked for is the argument, else $KOCLIP_PRECISION, else `auto`;
* `auto` takes the first fast path that runs here and is worth it (bf16 where the CPU has it),
  and falls back to fp32 where none does, where the converted-weights cache is off, or where
  the fast tower misses fp32 for this checkpoint;
* a fast precision asked for by name raises `PrecisionError` where it cannot be used;
* `backend="numpy"` (one-shot processes) keeps `auto` on the fp32 numpy towers: a single query
  is answered sooner by them than by building or compiling a graph first.

Importing this module imports no JAX: only the jitted backend does, when it is loaded.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from koclip.encoder import Encoder

BACKENDS = ("jax", "numpy")  # the fp32 towers: jitted (long-lived processes) or plain numpy


def load_encoder(
    name_or_path: str | os.PathLike[str] = "koclip-base",
    towers: Sequence[str] = ("text", "vision"),
    *,
    precision: str | None = None,
    backend: str = "jax",
    batch_size: int | None = None,
    cache_dir: str | None = None,
    compilation_cache: bool = False,
) -> Encoder:
    """Batch encoders of the towers asked for (search: text; indexing: vision).

    `precision`: "auto", "fp32", "bf16" or "int8" (None: $KOCLIP_PRECISION, else auto).
    `backend`: where fp32 runs, "jax" (jitted) or "numpy". `batch_size`: rows per forward pass
    (default 32 jitted or fast, 8 numpy). `compilation_cache`: point JAX's persistent
    compilation cache at koclip's cache folder before the jitted towers compile.
    """
    from koclip.phases import phase

    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, not {backend!r}")
    with phase(f"loading the model {os.fspath(name_or_path)} ({' and '.join(towers)})"):
        return _load(
            name_or_path, towers, precision, backend, batch_size, cache_dir, compilation_cache
        )


def _load(
    name_or_path: str | os.PathLike[str],
    towers: Sequence[str],
    precision: str | None,
    backend: str,
    batch_size: int | None,
    cache_dir: str | None,
    compilation_cache: bool,
) -> Encoder:
    from koclip.fast import precision as fast

    asked = fast.requested_precision(precision)
    one_shot_auto = asked == "auto" and backend == "numpy"
    chosen = "fp32" if one_shot_auto else fast.chosen_precision(asked)
    if chosen != "fp32":
        try:
            return fast._fast_encoder(name_or_path, chosen, towers, batch_size or 32, cache_dir)
        except fast.PrecisionError:
            if asked != "auto":
                raise
    if backend == "numpy":
        from koclip.fast.numpy_encoder import _numpy_encoder

        return _numpy_encoder(name_or_path, towers, batch_size or 8, cache_dir)
    if compilation_cache:
        from koclip.runtime import enable_compilation_cache

        enable_compilation_cache()
    from koclip.api import _jitted_encoder

    return _jitted_encoder(name_or_path, towers, batch_size or 32, cache_dir)
