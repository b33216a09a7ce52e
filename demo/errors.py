"""The demo's one exception: something the person running it can act on."""


class DemoError(Exception):
    """A problem stated in one message (a port taken, a tool missing, a step that failed)."""
