"""Root click group; each command module attaches its commands to it."""

from __future__ import annotations

import click


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="koclip-search")
def main() -> None:
    """Semantic photo search for Korean (KoCLIP + FAISS + SQLite)."""


def _register() -> None:
    # Imported for their side effect of adding commands to `main`.
    from cli import (  # noqa: F401
        duplicates_cmd,
        eval_cmd,
        index_cmd,
        search_cmd,
        serve_cmd,
        train_cmd,
    )


_register()
