"""okkhor: train and ship handwritten-grapheme recognisers."""
import os as _os

# albumentations otherwise asks the network for a newer version at import time.
_os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

__version__ = "0.1.0"

from okkhor.errors import OkkhorError  # noqa: E402

__all__ = ["OkkhorError", "__version__"]
