"""The one exception type whose message is shown to users as a single line."""


class OkkhorError(Exception):
    """A user-facing error: bad input, bad config, missing file. The CLI prints it as one line, no traceback."""


class WriteError(OkkhorError):
    """A file could not be written (a full disk, a read-only file system); the previous file was kept."""


class Interrupted(OkkhorError):
    """Training stopped on a signal after saving a checkpoint; the message says how to resume. The CLI prints it
    as is (not as an error) and exits with 128 + the signal's number."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + int(signum)
