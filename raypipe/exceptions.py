"""User-facing errors.  The CLI prints any ``RaypipeError`` without a traceback and exits 2."""

from __future__ import annotations


class RaypipeError(Exception):
    """Base class of every error caused by user input or user state."""


class ConfigError(RaypipeError):
    """A pipeline file or override is invalid; the message names file, line and field."""


class RunNotFoundError(RaypipeError):
    """No run with the given id exists in the metadata store."""


class ModelNotFoundError(RaypipeError):
    """No registered model, version or alias matches a reference; the message names what exists."""


class StageError(RaypipeError):
    """A stage failed in a way the user must fix (bad return value, bad import...)."""


class DataError(RaypipeError):
    """Input data is unusable: a missing path, a malformed line, conflicting schemas,
    an empty dataset, or rows that break a declared schema.  Names the file (and the
    line) or the column and rule."""


class ValidationFailed(DataError):
    """``data.validate`` found columns or rows that break the declared rules: a one-line
    summary (column, rule, count), then the report with example rows."""

    #: The name a message shows (``DataError: input 'data' failed validation: ...``).
    shown_as = "DataError"


class InputNotFound(DataError):
    """A path a stage reads does not exist (or holds no files)."""

    shown_as = "DataError"


class StorageError(RaypipeError):
    """The artifact root or metadata store cannot be used."""


class PickleRefused(StorageError):
    """A value only pickle can store, or a pickle artifact to read, in a stage without
    ``pickle: true`` (or a read without ``allow_pickle``): the message says how to opt in."""

    shown_as = "StorageError"


class StagePreempted(RaypipeError):
    """Raised by a stage that stopped because the scheduler preempted it.

    A stage that checks :meth:`StageContext.preemption_requested` saves a
    checkpoint under ``ctx.checkpoint_dir`` and raises this; the runner requeues
    the attempt (no retry spent) and the next grant resumes from the checkpoint.
    """


class GateFailed(StageError):
    """An evaluation gate was not met: the message names each metric, its value, the
    threshold and by how much it missed.  Not retried; the stages after it are skipped."""


class RunStopped(BaseException):
    """The driver was asked to stop (SIGTERM: ``loop stop``, a supervisor): the run ends as
    ``stopped``.  A BaseException, like KeyboardInterrupt, so no ``except Exception`` in
    a stage or library swallows it."""
