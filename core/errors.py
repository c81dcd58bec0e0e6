"""The NibbleError family: a one-line message plus a hint, shown alike by window and CLI."""

from __future__ import annotations


class NibbleError(Exception):
    """An error the user can act on.

    Parameters
    ----------
    message
        One line saying what went wrong.
    hint
        One line saying what to do about it.
    """

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message.strip().splitlines()[0] if message.strip() else "Error"
        self.hint = hint.strip()

    def __str__(self) -> str:
        return f"{self.message} (hint: {self.hint})" if self.hint else self.message


class SettingsError(NibbleError):
    """A QuantSettings, LoadOptions or GenerationSettings value is invalid."""


class ModelNotFoundError(NibbleError):
    """The model reference does not point at a usable model."""


class LoadError(NibbleError):
    """Loading failed; the previously loaded model is untouched."""


class GenerationError(NibbleError):
    """Generation failed or the input cannot be generated from."""


class CancelledError(NibbleError):
    """The user cancelled the operation."""

    def __init__(self, message: str = "Cancelled", hint: str = "") -> None:
        super().__init__(message, hint)


class ExportError(NibbleError):
    """Saving a quantized model failed or was refused; nothing was left behind."""
