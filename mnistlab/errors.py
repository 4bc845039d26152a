"""The errors a user can fix. The CLI prints any of them as one line, ``mnistlab: error:
MESSAGE``, and exits with the class's ``exit_code``; library callers catch them by type.

Every message names what was wrong (a field, a file, a URL) and, where it helps, what to do.
"""

from __future__ import annotations


class MnistlabError(Exception):
    """A problem with the user's input, files or environment (not a bug in mnistlab)."""

    exit_code = 2


class ConfigError(MnistlabError, ValueError):
    """An invalid configuration value or flag; the message starts with the field's name."""


class DataError(MnistlabError, ValueError):
    """A dataset could not be found, downloaded, parsed or verified."""


class CheckpointError(MnistlabError, ValueError):
    """A checkpoint is missing, damaged, foreign or does not match its model."""


class StorageError(MnistlabError, OSError):
    """A file could not be written (a full disk, a read-only or vanished folder); what was
    written before is kept, and the message says where and what to do."""


def storage_error(e: OSError, what: str, hint: str) -> StorageError:
    """A one-line StorageError for an OSError met while doing ``what``."""
    where = f" {e.filename}" if getattr(e, "filename", None) else ""
    return StorageError(f"{what}: {e.strerror or e}{where}; {hint}")


class TrainingDiverged(MnistlabError, RuntimeError):
    """The loss became NaN/inf or exploded; the last good checkpoint is kept."""

    exit_code = 1
