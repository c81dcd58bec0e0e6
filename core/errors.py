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
    """A QuantSettings, LoadOptions or GenerationSettings value is invalid.

    `field` names the setting it is about ('' when none), so a face can mark that
    field without reading the message.
    """

    def __init__(self, message: str, hint: str = "", field: str = "") -> None:
        super().__init__(message, hint)
        self.field = field


class ModelNotFoundError(NibbleError):
    """The model reference does not point at a usable model."""


class LoadError(NibbleError):
    """Loading failed; the previously loaded model is untouched."""


class OutOfMemoryError(LoadError):
    """A load ran out of memory (CUDA, or the CPU's RAM); it was caught and named.

    `needed` and `free` are the bytes the estimate said the load needs and what was
    free when it failed (None when unknown); `on_gpu` says which memory.
    """

    def __init__(
        self,
        message: str,
        hint: str = "",
        needed: int | None = None,
        free: int | None = None,
        on_gpu: bool = False,
    ) -> None:
        super().__init__(message, hint)
        self.needed, self.free, self.on_gpu = needed, free, on_gpu


class GenerationError(NibbleError):
    """Generation failed or the input cannot be generated from."""


class CancelledError(NibbleError):
    """The user cancelled the operation."""

    def __init__(self, message: str = "Cancelled", hint: str = "") -> None:
        super().__init__(message, hint)


class ExportError(NibbleError):
    """Saving a quantized model failed or was refused; nothing was left behind."""


class WriteError(NibbleError):
    """Files could not be written: the disk is full or the folder is read-only."""


_FULL = ("no space left", "storagefull", "disk quota", "code: 28,", "code: 122,")
_READ_ONLY = ("read-only file system", "readonlyfilesystem", "code: 30,")
_DENIED = ("permission denied", "permissiondenied", "code: 13,", "code: 1,")


def write_error(exc: BaseException, folder: object) -> NibbleError | None:
    """The message for a failed write into `folder`, or None when `exc` is no such failure.

    Understands OSError and the errors of libraries that wrap it in their own type
    with the OS error in the text (safetensors' SafetensorError, for one).
    """
    import errno

    if isinstance(exc, NibbleError):
        return exc
    code = exc.errno if isinstance(exc, OSError) else None
    text = str(exc).lower()
    if code in (errno.ENOSPC, errno.EDQUOT) or any(s in text for s in _FULL):
        return WriteError(
            f"ran out of space while writing to {folder}",
            "free some disk space or choose another disk; nothing was kept",
        )
    if code == errno.EROFS or any(s in text for s in _READ_ONLY):
        return WriteError(
            f"cannot write to {folder}: the file system is read-only",
            "choose a folder you can write to",
        )
    if code in (errno.EACCES, errno.EPERM) or any(s in text for s in _DENIED):
        return WriteError(
            f"cannot write to {folder}: permission denied",
            "choose a folder you can write to",
        )
    if isinstance(exc, OSError) and exc.errno is not None:
        # Without an errno it was raised by a library's own code (a data file of
        # its own missing at import, say): not a failed write.
        return WriteError(
            f"writing to {folder} failed: {exc.strerror or exc}",
            "check the folder and the disk, or run again with --debug",
        )
    return None
