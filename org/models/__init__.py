"""One way to call a model: litellm for everything, an embedded llama.cpp provider offline.

Only light names are imported here; litellm and llama_cpp load inside functions.
"""

from org.models.names import ModelName, parse_model

__all__ = ["ModelName", "parse_model"]
