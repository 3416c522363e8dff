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
