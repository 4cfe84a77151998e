"""The errors a user can fix: bad data, bad config, missing weights or runs. The command line turns these (and only
these) into a one-line message and exit code 2; any other exception is a bug and keeps its traceback."""
from __future__ import annotations


class UserError(Exception):
    """Something the user can fix; the message says what and where (file, row, column, key)."""


class ConfigError(UserError, ValueError):
    """A bad config file, experiment or key=value override."""


class DataError(UserError, ValueError):
    """Bad input data: the message names the file, and the row or column where it can."""


class SubmissionError(UserError, ValueError):
    """A submission that does not match the sample submission."""


class NotFound(UserError, FileNotFoundError):
    """A run, checkpoint, file or pretrained weights that are not where they were looked for."""
