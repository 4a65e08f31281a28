"""Domain errors. Each names the field at fault so API, CLI and store can report it as is."""

from __future__ import annotations


class LD2Error(Exception):
    """Base class of every error ld2 raises on purpose."""


class InvalidInput(LD2Error, ValueError):
    """Input that does not describe a valid study, trial or request.

    `field` is a dotted path such as ``parameter_space.axes[1].size``; the message always
    starts with it, so a bare ``str(err)`` tells the user where to look.
    """

    def __init__(self, field: str, problem: str) -> None:
        self.field = field
        self.problem = problem
        super().__init__(f"{field}: {problem}" if field else problem)

    def under(self, prefix: str) -> InvalidInput:
        """The same error, with its field placed under `prefix` (``study`` + ``name``)."""
        if not prefix:
            return self
        field = (
            f"{prefix}.{self.field}"
            if self.field and not self.field.startswith("[")
            else (f"{prefix}{self.field}")
        )
        return InvalidInput(field, self.problem)


class NotFound(LD2Error, LookupError):
    """No such study (or it is no longer active, where that is what the caller needs)."""


class TrialRejected(LD2Error):
    """A trial that cannot be accepted: not reserved, reissued, another worker's, registered.

    `reason` is a short code (``unknown``, ``reissued``, ``wrong_worker``, ``duplicate``,
    ``mismatch``, ``vector_length``) and the message says it in words.
    """

    def __init__(self, reason: str, message: str) -> None:
        self.reason = reason
        super().__init__(message)


class BackendUnavailable(LD2Error, ConnectionError):
    """Redis or the API could not be reached; the message names the URL."""
