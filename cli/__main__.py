"""`python -m cli`: the same as the `koclip-search` command."""

from cli import main

main(prog_name="koclip-search")
