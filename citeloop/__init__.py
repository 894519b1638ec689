"""citeloop shared core: configuration, offline model loading and storage.

Importing this package forbids model-hub downloads before any Hugging Face library is imported:
every model citeloop uses comes from a local package whose files are checked by sha256.
"""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

__version__ = "0.1.0"
