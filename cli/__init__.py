"""The `koclip-search` command line: wires the packages together, turns domain errors into messages."""

from cli.main import main

__all__ = ["main"]
