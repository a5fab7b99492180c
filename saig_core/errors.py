"""The one base class for errors a user can act on: the CLI prints them without a traceback."""


class SaigError(Exception):
    """A problem with the user's input (file, value, environment), with a message naming it."""
