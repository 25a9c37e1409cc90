"""One exception family. Messages are one line that says what was expected and what was found.

Every `SegclsError` is a user-facing problem (bad input, missing library): the CLIs print it as
`Error: ...` and exit with `exit_code`, never with a traceback.
"""


class SegclsError(Exception):
    exit_code = 2


class DatasetError(SegclsError):
    """A dataset folder (or a raw challenge download) is malformed."""


class CheckpointError(SegclsError):
    """A training checkpoint or pretrained weight file cannot be used."""


class ModelError(SegclsError):
    """An exported model (ONNX, engine) is missing, corrupt or does not fit the request."""


class SlideError(SegclsError):
    """A slide cannot be opened or read at the requested resolution."""


class ExportError(SegclsError):
    """Export failed, including a failed numerical verification."""

    exit_code = 1


class BackendUnavailableError(SegclsError):
    """An inference backend's library or device is not available here."""
