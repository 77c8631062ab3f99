"""The one exception type users see: its message is a complete, one-line instruction."""


class KasegError(Exception):
    """A problem with the user's input (file, config key, model name), not a bug in kaseg.

    The CLI prints ``str(error)`` on one line and exits non-zero; no traceback unless ``--debug``.
    """
