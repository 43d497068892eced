"""The one base class of mistakes a user can fix: the CLI prints the message and exits with code 2."""


class UserError(Exception):
    """Bad input or an unreachable endpoint; the message names the field or endpoint and how to fix it."""
