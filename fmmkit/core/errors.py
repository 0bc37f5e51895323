"""The base of every error a user can fix: the CLI prints its one-line message, never a traceback."""


class UserError(Exception):
    """A mistake the user can fix; ``str()`` is one line per problem, naming the place and the fix."""
