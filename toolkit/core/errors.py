"""The one exception type for mistakes a user can fix.

Its message is the single line ``main()`` prints: it says what is wrong *and* what to do.
Anything else that escapes a stage is a bug and is reported as such.
"""


class UserError(Exception):
    """Bad input, settings or workspace state; the message says what to fix."""


class ConfigError(UserError):
    """A settings file or flag that cannot be used."""


class WorkspaceBusy(UserError):
    """Another run holds the workspace's lock."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C or a stop signal during a stage; the message says what was kept and how to go on.

    ``resume``: the command that continues the interrupted work, when there is one."""

    def __init__(self, message: str, resume: str | None = None) -> None:
        super().__init__(message)
        self.resume = resume
