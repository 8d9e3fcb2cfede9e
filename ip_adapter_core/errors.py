"""Errors a user can act on. Every message names the file or input, what was
expected, what was found and what to do."""


class IPAdapterError(ValueError):
    """Base class: a problem with the user's input, not a bug in the extension."""


class IPAdapterFileError(IPAdapterError):
    """A model file that cannot be read or is not a supported IP-Adapter (``kind`` says
    what the file was meant to be, e.g. a CLIP vision file)."""

    def __init__(self, path, problem: str, hint: str = "", kind: str = "IP-Adapter file"):
        self.path = str(path)
        self.problem, self.hint = problem, hint  # kept apart: callers that list several files reuse them
        msg = f"{kind} '{self.path}': {problem}"
        if hint:
            msg += f" {hint}"
        super().__init__(msg)


class IPAdapterMismatchError(IPAdapterError):
    """Two inputs that do not belong together (adapter vs encoder, adapter vs model)."""
