"""The project's one error type for bad input."""


class LoraMergeError(ValueError):
    """Bad input: the message is one line naming the file or value and what was expected."""
