"""What a run did, for the summary line and --json."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Summary:
    """Counts of one run. new+updated+moved+unchanged+failed = the files found (and unreadable folders).

    `failed` counts every file that cannot be indexed now, including ones recorded by an
    earlier run and unchanged since (they are not retried); `failures` lists them with reasons.
    """

    new: int
    updated: int
    moved: int
    deleted: int
    unchanged: int
    failures: tuple[tuple[str, str], ...]  # (path relative to the photo root, reason)
    seconds: float
    # Index rebuilds the library's growth called for: "flat -> ivf-sq8 for 250,000 photos",
    # "ivf-pq retrained for 4,200,000 photos".
    index_rebuilds: tuple[str, ...] = ()
    # What the user should know about how the run went ("Ray node skipped: ...").
    notes: tuple[str, ...] = ()

    @property
    def removed(self) -> int:
        """Photos removed from the library (their files gone, moved out or excluded); the
        files on disk are never touched. `deleted` is the old name."""
        return self.deleted

    @property
    def failed(self) -> int:
        """Number of files (and folders) that could not be indexed."""
        return len(self.failures)

    def to_json(self) -> dict[str, Any]:
        """The --json object."""
        return {
            "new": self.new,
            "updated": self.updated,
            "moved": self.moved,
            "removed": self.removed,
            "deleted": self.deleted,  # the old name of "removed", kept for one release
            "unchanged": self.unchanged,
            "failed": self.failed,
            "failures": [{"path": p, "reason": r} for p, r in self.failures],
            "seconds": round(self.seconds, 3),
            "index_rebuilds": list(self.index_rebuilds),
            "notes": list(self.notes),
        }

    def to_text(self, max_reasons: int = 5) -> str:
        """A few human lines: the counts, then the first failures with their reasons."""
        lines = [
            f"Indexed in {self.seconds:.1f} s: {self.new} new, {self.updated} updated, "
            f"{self.moved} moved, {self.removed} removed from the library, "
            f"{self.unchanged} unchanged, {self.failed} failed"
        ]
        lines += [f"  index: {what}" for what in self.index_rebuilds]
        lines += [f"  note: {note}" for note in self.notes]
        for path, reason in self.failures[:max_reasons]:
            lines.append(f"  failed: {path}: {reason}")
        if self.failed > max_reasons:
            lines.append(f"  ... and {self.failed - max_reasons} more (--json lists them all)")
        return "\n".join(lines)
