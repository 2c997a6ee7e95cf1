"""User-facing errors. The CLI prints a ``StrokeSSLError`` in one line and exits 2."""


class StrokeSSLError(Exception):
    """Bad input or configuration the user can fix; the message says what and how."""


class ConfigError(StrokeSSLError):
    """A YAML config or ``--set`` override is invalid (unknown key, wrong type, bad value)."""


class CohortError(StrokeSSLError):
    """The cohort table is unusable (missing column, bad label, duplicate id, too few positives)."""


class ImageError(StrokeSSLError):
    """An image file cannot be read or does not fit the pipeline (4D, unreadable, empty)."""


class RunFolderError(StrokeSSLError):
    """A run folder cannot be used as asked (wrong kind, unfinished, in use, changed weights, output onto it)."""


class NonFiniteError(StrokeSSLError):
    """A computed volume, embedding or probability is NaN or infinite (never written as an answer)."""
