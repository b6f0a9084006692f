"""User-facing errors: the bottom layer, so that every layer can raise them without importing the CLI."""


class UserError(Exception):
    """Bad input from the user: printed as one line by ``ddk-fast``, exit status 2."""


class TrainingDiverged(UserError):
    """The loss (or gradient norm) became NaN/inf. The message names the step and the last good
    checkpoint; the in-progress folder is kept so the run can be resumed with other settings."""


class CheckpointWriteError(UserError):
    """A checkpoint could not be written (disk full, quota, ...). The previous checkpoint and the
    previous output are untouched; the message says which checkpoint a --resume would continue from."""


class RunInterrupted(RuntimeError):
    """Raised by the ``stop_after_steps`` testing hook: the run stops as if killed right after a step
    (nothing else is written), so tests can exercise ``--resume`` without signals."""
