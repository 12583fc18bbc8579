"""Errors shared by both kernel implementations (plain Python, so both raise the same type)."""


class EngineInputError(ValueError):
    """An input the engine cannot price: the message names the offending field."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.reason = message


class KernelUnavailableError(RuntimeError):
    """The compiled kernel was asked for (the default) but is not built."""
