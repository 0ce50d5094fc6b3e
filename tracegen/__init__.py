"""Forward Pass, annotated: trace a language model on the story's prompt, build the site.

Importing the package is cheap and torch-free: the site path only needs `load_trace`.
"""

from .store import SCHEMA_VERSION, ModelCard, Trace, TraceError, load_trace

__all__ = ["SCHEMA_VERSION", "ModelCard", "Trace", "TraceError", "load_trace"]
