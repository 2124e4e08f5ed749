"""The one error type the prior package raises for problems a user can fix."""


class PriorError(Exception):
    """A model could not be found, fetched or loaded. ``str()`` is one line naming the model,
    so that the CLI can print it as is."""

    def __init__(self, message: str):
        # Messages quote other libraries' errors, which may span lines.
        super().__init__(" ".join(message.split()))
