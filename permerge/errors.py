"""Errors with one-line messages that the CLI and the dashboard show as they are."""


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


class Cancelled(PermergeError):
    """Raised by a progress callback to stop a run; nothing is cached for the stopped stage."""
