"""User-facing errors: one clear sentence, shown without a traceback by the CLI and the demo."""


class PACLError(Exception):
    """A problem with the user's input or environment, explained in one line."""

    def __init__(self, message: str):
        assert "\n" not in message, "PACLError messages must be a single line"
        super().__init__(message)
