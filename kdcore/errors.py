"""User-facing errors: anything raised as KdflowError is shown as one clear message, no traceback."""


class KdflowError(Exception):
    """A problem the user can fix (bad config, missing files, wrong checkpoint...)."""


class ConfigError(KdflowError):
    """The pipeline configuration is invalid."""


class DataError(KdflowError):
    """A dataset could not be found or read, or its content is invalid."""


class CheckpointError(KdflowError):
    """A checkpoint is missing, corrupted, or of another architecture."""


class DivergenceError(KdflowError):
    """Training produced a non-finite loss."""


def describe(exc: BaseException, limit: int = 300) -> str:
    """``exc`` in one line for a message: its type and the first line of its text (the type alone
    when it has none, as an EOFError or an IndexError of an unpickler often does)."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0][:limit]}" if text else type(exc).__name__
