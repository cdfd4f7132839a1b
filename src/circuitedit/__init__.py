"""circuitedit: localize, unlearn and rewrite single facts inside causal language models."""

from .data.requests import EditRequest, InvalidRequestError
from .models import Component, load_model
from .workflows.pipeline import EditConfig, EditResult, edit

__version__ = "0.1.0"

__all__ = [
    "Component",
    "EditConfig",
    "EditRequest",
    "EditResult",
    "InvalidRequestError",
    "__version__",
    "edit",
    "load_model",
]
