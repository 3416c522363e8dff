"""kdflow's own errors through Prefect: found again under the orchestrator's wrapping, and kept out
of Prefect's console log (the CLI prints them as one line; a traceback would bury it).

Prefect records a failed task or flow run on its ``prefect.task_runs`` / ``prefect.flow_runs``
loggers at ERROR, the flow's record with the traceback. For a :class:`KdflowError` those records
are demoted to DEBUG (shown with ``PREFECT_LOGGING_LEVEL=DEBUG``); any other exception keeps them.
"""

from __future__ import annotations

import logging
from typing import Optional

from kdcore.errors import KdflowError

RUN_LOGGERS = ("prefect.task_runs", "prefect.flow_runs")


def user_error(exc: BaseException) -> Optional[KdflowError]:
    """The KdflowError ``exc`` is or wraps (through ``__cause__`` / ``__context__``), if any."""
    seen: set[int] = set()
    cause: Optional[BaseException] = exc
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, KdflowError):
            return cause
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    return None


def _error_names() -> tuple[str, ...]:
    names, todo = set(), [KdflowError]
    while todo:
        cls = todo.pop()
        names.add(cls.__name__)
        todo.extend(cls.__subclasses__())
    return tuple(sorted(names))


class UserErrorFilter(logging.Filter):
    """Demotes Prefect's records of a run that failed with a KdflowError to DEBUG."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.ERROR or not self._about_user_error(record):
            return True
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return logging.getLogger("prefect").isEnabledFor(logging.DEBUG)

    @staticmethod
    def _about_user_error(record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[1] is not None:
            return user_error(record.exc_info[1]) is not None
        # "Finished in state Failed('Task run encountered an exception CacheError: ...')": no exc_info
        message = record.getMessage()
        return "Failed(" in message and any(
            f"exception {n}:" in message or f". {n}:" in message for n in _error_names()
        )


_FILTER = UserErrorFilter()


def quiet_user_errors() -> None:
    """Install the filter on Prefect's run loggers (idempotent; survives Prefect's logging setup,
    which replaces handlers but keeps logger filters)."""
    for name in RUN_LOGGERS:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)


def reraise_user_error(exc: BaseException) -> None:
    """Raise the KdflowError wrapped in ``exc`` as itself (no chained traceback); else return."""
    found = user_error(exc)
    if found is not None:
        raise found from None
