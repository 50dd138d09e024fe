"""The one exception type whose message is shown to users as a single line."""


class OkkhorError(Exception):
    """A user-facing error: bad input, bad config, missing file. The CLI prints it as one line, no traceback."""
