"""circuitedit: localize, unlearn and rewrite single facts inside causal language models."""

from .models import Component, load_model
from .pipeline import EditConfig, EditResult, edit
from .requests import EditRequest, InvalidRequestError

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
