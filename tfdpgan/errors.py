"""The errors a user can cause, as opposed to bugs.

Commands print a ``TfdpganError`` as one line ``error: ...`` and exit with status 2
(`tfdpgan.cli.run`); any other exception is a bug and keeps its traceback. Each subclass also
derives from the built-in exception that callers caught before these types existed
(``ValueError`` or ``FileNotFoundError``), so library users' ``except`` clauses keep working.
"""

__all__ = ["TfdpganError", "InputDataError", "SettingsError", "WorkdirError",
           "EvaluationError", "MissingFileError", "OutputExistsError", "TrainingDiverged",
           "Interrupted"]


class TfdpganError(Exception):
    """Base of every error caused by the user's input, settings or files."""
    exit_code = 2


class InputDataError(TfdpganError, ValueError):
    """An input image, label, mask, manifest or TFRecord data set is unusable."""


class SettingsError(TfdpganError, ValueError):
    """A flag or config value is invalid, or settings contradict each other."""


class WorkdirError(TfdpganError, ValueError):
    """A run folder is missing, incomplete, or holds a different run."""


class EvaluationError(TfdpganError, ValueError):
    """An evaluation cannot be carried out as asked (e.g. a test set that overlaps training)."""


class MissingFileError(TfdpganError, FileNotFoundError):
    """A file or folder the user named does not exist."""


class OutputExistsError(TfdpganError, FileExistsError):
    """An output would overwrite something that exists and overwriting was not asked for."""


class TrainingDiverged(TfdpganError):
    """A loss or update became NaN/Inf; the last good checkpoint is kept."""


class Interrupted(TfdpganError):
    """SIGINT/SIGTERM: a checkpoint was written at the current step; rerun to resume."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + signum
