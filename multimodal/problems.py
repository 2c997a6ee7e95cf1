"""A problem found in a cohort: one thing wrong, tied to a subject and/or column where it applies."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Problem:
    """One thing wrong with the cohort, tied to a subject and/or column where it applies."""

    message: str
    subject: str | None = None
    column: str | None = None

    def __str__(self) -> str:
        where = []
        if self.subject is not None:
            where.append(f"subject {self.subject}")
        if self.column is not None:
            where.append(f"column {self.column!r}")
        return f"{', '.join(where)}: {self.message}" if where else self.message
