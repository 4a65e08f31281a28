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

    def __reduce__(self) -> tuple[type[InvalidInput], tuple[str, str]]:
        return (type(self), (self.field, self.problem))  # survives a trip between processes

    def under(self, prefix: str) -> InvalidInput:
        """The same error, with its field placed under `prefix` (``study`` + ``name``)."""
        if not prefix:
            return self
        field = f"{prefix}.{self.field}" if self.field else prefix
        return InvalidInput(field, self.problem)


class NameTaken(InvalidInput):
    """A study name that another study holds (lite_dist2 answers 400 for it)."""


class StudyConflict(LD2Error):
    """A study of this name exists and describes another computation.

    `differences` are ``key: old -> new`` lines (see `ld2.core.identity`)."""

    def __init__(self, name: str, study_id: str, differences: list[str]) -> None:
        self.name = name
        self.study_id = study_id
        self.differences = differences
        shown = "; ".join(differences)
        super().__init__(f"a different study named {name!r} exists ({shown})")

    def __reduce__(self) -> tuple[type[StudyConflict], tuple[str, str, list[str]]]:
        return (type(self), (self.name, self.study_id, self.differences))


class NotFound(LD2Error, LookupError):
    """No such study (or it is no longer active, where that is what the caller needs)."""


REJECTIONS = {
    "unknown": "Trial not reserved: unknown id, or already reissued after its lease expired.",
    "reissued": "Trial expired and its range was reissued to another worker; result refused.",
    "wrong_worker": "Trial is reserved by another worker (worker_node_id differs).",
    "duplicate": "Trial is already registered.",
    "mismatch": "Trial space differs from the range that was reserved under this trial id.",
    "vector_length": "Vector results have another length than this study's earlier results.",
}
"""Why a trial is refused (409), in words; HTTP clients map the words back to the code."""


class TrialRejected(LD2Error):
    """A trial that cannot be accepted: not reserved, reissued, another worker's, registered.

    `reason` is a short code (``unknown``, ``reissued``, ``wrong_worker``, ``duplicate``,
    ``mismatch``, ``vector_length``) and the message says it in words.
    """

    def __init__(self, reason: str, message: str | None = None) -> None:
        self.reason = reason
        super().__init__(message or REJECTIONS.get(reason, reason))

    def __reduce__(self) -> tuple[type[TrialRejected], tuple[str, str]]:
        return (type(self), (self.reason, str(self)))

    @classmethod
    def from_message(cls, message: str) -> TrialRejected:
        reason = next((k for k, v in REJECTIONS.items() if v == message), "rejected")
        return cls(reason, message)


class BackendUnavailable(LD2Error, ConnectionError):
    """Redis or the API could not be reached; the message names the URL."""


class RunnerMismatch(LD2Error, TypeError):
    """A runner that cannot be called for a study: a constant it has no parameter for, more or
    fewer axes than its positional parameters, or a required parameter nothing supplies.

    `runner` is the runner's name and the message says what does not fit, in one line
    (``runner 'mandelbrot' has no parameter 'max_iters' for const_param 'max_iters' …``).
    """

    def __init__(self, runner: str, message: str) -> None:
        self.runner = runner
        super().__init__(message)

    def __reduce__(self) -> tuple[type[RunnerMismatch], tuple[str, str]]:
        return (type(self), (self.runner, str(self)))  # survives a trip between processes
