"""The one exception type that means "the user can fix this"."""


class UserError(Exception):
    """A mistake in input, recipe or paths: the CLI prints it as one line and exits non-zero.

    Messages name the file, row, key or value at fault and say how to fix it.
    """
