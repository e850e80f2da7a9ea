"""User-facing errors.

Every problem caused by what the user gave us (a config key, a path, a file) is raised as one of
these. The CLI prints ``softlabels: error: <message>`` on one line and exits non-zero; library
users catch them like any exception.
"""


class SoftlabelsError(Exception):
    """Base class: a problem with the user's input, reported as one line."""

    exit_code = 1


class ConfigError(SoftlabelsError):
    """A config key, type or value is wrong. Exit code 2, like argparse usage errors."""

    exit_code = 2


class DataError(SoftlabelsError):
    """A dataset is missing, malformed or does not match its expected layout."""


class CheckpointError(SoftlabelsError):
    """A checkpoint is missing, corrupt, or belongs to another model or config."""


class StorageError(SoftlabelsError):
    """A run's file could not be written (disk full, read-only folder, permissions): a fault of
    the machine, reported with the path and the cause; what was saved before stays intact."""


class RunLockedError(SoftlabelsError):
    """A run directory is owned by another live process (named in the message)."""
class MissingInputError(SoftlabelsError):
    """A method's loss lacks an input it requires: a teacher's output, stage feature maps, an
    extra view or class partner in the batch, or a module its ``setup`` builds."""
