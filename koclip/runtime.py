"""JAX runtime setup for KoCLIP's jitted towers: the persistent compilation cache."""

from __future__ import annotations

from pathlib import Path

from koclip.checkpoints.cache import default_cache_root

# Every jitted program is worth caching: a second `koclip-search search` should not compile
# the text tower again, and loading a compiled program is far cheaper than compiling it.
MIN_COMPILE_SECS = 0.0


def compilation_cache_dir() -> Path:
    """Where JAX's persistent compilation cache lives: beside koclip's converted weights."""
    return default_cache_root() / "jax"


def enable_compilation_cache(directory: Path | None = None) -> Path:
    """Point JAX's persistent compilation cache at `directory` (default: the user cache dir).

    Idempotent and cheap; must run before the first jitted call of the process.
    """
    import jax

    directory = Path(directory or compilation_cache_dir())
    if jax.config.jax_compilation_cache_dir != str(directory):
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError:
            return directory  # an unwritable cache only costs speed
        jax.config.update("jax_compilation_cache_dir", str(directory))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_SECS)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return directory
