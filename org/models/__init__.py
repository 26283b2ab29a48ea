"""One way to call a model: litellm for everything, an embedded llama.cpp provider offline.

Importing this package is cheap: litellm and llama_cpp load on the first call.
"""

from org.models.client import ModelClient, forget_outages, missing_key
from org.models.names import ModelName, parse_model
from org.models.records import CallRecord, StructuredResult

__all__ = [
    "CallRecord", "ModelClient", "ModelName", "StructuredResult",
    "forget_outages", "missing_key", "parse_model",
]
