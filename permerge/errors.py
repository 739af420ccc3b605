"""Errors with one-line messages that the CLI and the dashboard show as they are."""
import warnings


class PermergeError(Exception):
    """Base class: the message is a complete, one-line explanation for the user."""


class CheckpointError(PermergeError):
    """A checkpoint cannot be found, read or used."""


class IncompatibleModels(PermergeError):
    """The two checkpoints do not share an architecture."""


class DataError(PermergeError):
    """The data cannot be read or is empty."""


class StatisticsError(PermergeError):
    """Features are not usable (NaN, infinite)."""


class OutputError(PermergeError):
    """An output folder cannot be (over)written safely."""


class CacheError(PermergeError):
    """The cache folder cannot be used."""


class PermergeWarning(UserWarning):
    """A one-line notice about questionable input; the run goes on.  The CLI prints it as
    ``warning: <message>``; the dashboard's server log shows it."""


def warn(message: str) -> None:
    warnings.warn(message, PermergeWarning, stacklevel=2)


warnings.simplefilter("always", PermergeWarning)


class Cancelled(PermergeError):
    """Raised by a progress callback to stop a run; nothing is cached for the stopped stage."""
