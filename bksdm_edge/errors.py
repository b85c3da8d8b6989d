"""User-facing errors: the CLI prints these without a traceback and exits non-zero."""


class BksdmError(Exception):
    """Base class of errors whose message tells the user what went wrong and what to do."""

    exit_code = 2


class ValidationFailed(BksdmError):
    """An exported model did not match PyTorch; the message lists every failed check."""

    exit_code = 3
