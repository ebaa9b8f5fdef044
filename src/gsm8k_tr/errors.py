"""The one exception type that means "the user can fix this", and the one line an error becomes in it."""


class UserError(Exception):
    """A mistake in input, recipe or paths: the CLI prints it as one line and exits non-zero.

    Messages name the file, row, key or value at fault and say how to fix it.
    """


def one_line(error: BaseException) -> str:
    """An exception's first non-empty line (its type's name when it has no text), for a one-line UserError."""
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__
