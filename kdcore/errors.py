"""User-facing errors: anything raised as KdflowError is shown as one clear message, no traceback."""

import re

# how torch's DataLoader re-raises a worker's exception: its type, built from a message that wraps
# the worker's traceback ("Caught DataError in DataLoader worker process 0.\nOriginal Traceback ...")
_WORKER = re.compile(r"Caught \w+ in DataLoader worker process \d+\.\nOriginal Traceback")


class KdflowError(Exception):
    """A problem the user can fix (bad config, missing files, wrong checkpoint...).

    Raised in a DataLoader worker, it reaches the main process with the worker's traceback in its
    message; it keeps only its own message there, so that it still reads as one line."""

    def __init__(self, *args: object) -> None:
        if len(args) == 1 and isinstance(args[0], str) and _WORKER.match(args[0]):
            marker = f"{type(self).__module__}.{type(self).__qualname__}: "
            at = args[0].rfind(marker)
            if at >= 0:
                args = (args[0][at + len(marker) :].strip(),)
        super().__init__(*args)


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
