"""The one exception type for errors a user can cause (bad paths, bad audio, wrong layouts, bad checkpoints)."""


class MaebenchError(Exception):
    """A one-line, user-facing error: names the file or value and says what to do.

    The CLI prints it without a traceback and exits with status 2.
    """
