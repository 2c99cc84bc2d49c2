"""The one base class of user errors.

A user error is something the person running a command can fix: a bad config value, a missing
file, a sweep spec that cannot work. Its message is one line that names the problem and the fix.
`scalelab.cli` prints it as `scalelab COMMAND: error: MESSAGE` and exits with status 2. Each
package raises a subclass that says where the problem lies; anything else is a bug and keeps its
traceback.
"""


class UserError(Exception):
    """A problem the user can fix; the message names it and says how."""


class ConfigError(UserError, ValueError):
    """A configuration value is missing, mistyped or inconsistent; the message names the key."""
