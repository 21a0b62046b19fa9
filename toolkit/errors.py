"""The one exception type for mistakes a user can fix.

Its message is the single line ``main()`` prints: it says what is wrong *and* what to do.
Anything else that escapes a stage is a bug and is reported as such.
"""


class UserError(Exception):
    """Bad input, settings or workspace state; the message says what to fix."""


class ConfigError(UserError):
    """A settings file or flag that cannot be used."""
