"""User-facing errors: things the user can fix (bad config, wrong path, corrupt input)."""


class MmrepError(Exception):
    """An error caused by user input. The CLI prints its message as one line and exits 2.

    The message names the offending thing and how to fix it. Programming errors keep raising
    ordinary exceptions with a stack trace.
    """
