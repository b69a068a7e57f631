"""Root click group; each command module attaches its commands to it."""

from __future__ import annotations

import click

# Where the command line as given is kept (click's shared `ctx.meta`): `index --ray` runs
# itself again under a watchdog (cli.supervise).
ARGV_KEY = "koclip_search.argv"


# The commands in the order of the work, each with a whole one-line description (click would
# cut the docstrings' first sentences to the terminal's width).
COMMANDS = {
    "index": "Index a photo folder (again: only what changed).",
    "search": "Find photos by Korean or English text, or by a photo.",
    "similar": "Find photos that look like a photo.",
    "serve": "Search and browse in a web browser.",
    "duplicates": "Find duplicate photos; set the extras aside, or undo.",
    "info": "What a library holds: photos, model, index, size.",
    "reindex": "Rebuild the search index as another type.",
    "download": "Fetch a model (and its tokenizer) for offline use.",
    "eval": "Recall@1/5/10 of a model on captioned images.",
    "train": "Fine-tune a KoCLIP checkpoint on captioned images.",
}


class _Root(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        known = [name for name in COMMANDS if name in self.commands]
        return known + sorted(set(self.commands) - set(known))

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = []
        for name in self.list_commands(ctx):
            command = self.get_command(ctx, name)
            if command is not None and not command.hidden:
                rows.append((name, COMMANDS.get(name) or command.get_short_help_str(80)))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)

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
