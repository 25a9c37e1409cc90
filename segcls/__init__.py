"""segcls: learning to segment histology with classification labels (Ciga & Martel, MedIA 2021).

Importing the package is cheap: torch-dependent modules (model, train, export) are imported on use,
so that `segcls.runtime` works on a deployment box without torch.
"""

from segcls.core.errors import (
    BackendUnavailableError,
    CheckpointError,
    DatasetError,
    ExportError,
    ModelError,
    SegclsError,
    SlideError,
)

__version__ = "0.1.0"

__all__ = [
    "BackendUnavailableError",
    "CheckpointError",
    "DatasetError",
    "ExportError",
    "ModelError",
    "SegclsError",
    "SlideError",
    "__version__",
]
