"""User-facing errors: the bottom layer, so that every layer can raise them without importing the CLI."""


class UserError(Exception):
    """Bad input from the user: printed as one line by ``ddk-fast``, exit status 2."""
