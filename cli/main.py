"""Root click group; each command module attaches its commands to it."""

from __future__ import annotations

import click

# Where the command line as given is kept (click's shared `ctx.meta`): `index --ray` runs
# itself again under a watchdog (cli.supervise).
ARGV_KEY = "koclip_search.argv"


class _Root(click.Group):
    def make_context(self, info_name, args, parent=None, **extra):  # type: ignore[no-untyped-def]
        argv = list(args)
        ctx = super().make_context(info_name, args, parent=parent, **extra)
        ctx.meta[ARGV_KEY] = argv
        return ctx


@click.group(cls=_Root, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="koclip-search")
def main() -> None:
    """Semantic photo search for Korean (KoCLIP + FAISS + SQLite)."""


def _register() -> None:
    # Imported for their side effect of adding commands to `main`.
    from cli import (  # noqa: F401
        download_cmd,
        duplicates_cmd,
        eval_cmd,
        index_cmd,
        search_cmd,
        serve_cmd,
        train_cmd,
    )


_register()
