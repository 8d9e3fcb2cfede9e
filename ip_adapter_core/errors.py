"""Errors a user can act on. Every message names the file or input, what was
expected, what was found and what to do."""


class IPAdapterError(ValueError):
    """Base class: a problem with the user's input, not a bug in the extension."""


class IPAdapterFileError(IPAdapterError):
    """An IP-Adapter file that cannot be read or is not a supported IP-Adapter."""

    def __init__(self, path, problem: str, hint: str = ""):
        self.path = str(path)
        msg = f"IP-Adapter file '{self.path}': {problem}"
        if hint:
            msg += f" {hint}"
        super().__init__(msg)


class IPAdapterMismatchError(IPAdapterError):
    """Two inputs that do not belong together (adapter vs encoder, adapter vs model)."""
