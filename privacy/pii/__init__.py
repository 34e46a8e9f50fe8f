"""PII scrubbing of site text before tokenization (Microsoft Presidio, offline).

- :mod:`.config`: the ``pii.*`` run-config keys and default entity types;
- :mod:`.analyzer`: Presidio's analyzer on a local spaCy model, and the findings;
- :mod:`.recognizers`, :mod:`.pattern_recognizer`: our regular-expression
  recognizers;
- :mod:`.overlaps`: overlapping findings of different types;
- :mod:`.scrubber`: replacing findings (tag, mask, keyed pseudonyms);
- :mod:`.files`: scrubbing site files into a cache; :mod:`.synthetic`: synthetic PII.
"""

import os

# Offline: emptied before anything imports Presidio, whose URL recognizer would
# otherwise fetch the public-suffix list (see .analyzer). Every import of a module
# of this package runs this file first.
os.environ.setdefault("TLDEXTRACT_PUBLIC_SUFFIX_LIST_URLS", "")

from .config import (  # noqa: E402
    DEFAULT_ENTITIES,
    STRUCTURED_ENTITIES,
    PIIConfig,
    PIIError,
    PIIMode,
)
from .scrubber import Scrubber, load_site_key  # noqa: E402

__all__ = [
    "DEFAULT_ENTITIES",
    "STRUCTURED_ENTITIES",
    "PIIConfig",
    "PIIError",
    "PIIMode",
    "Scrubber",
    "load_site_key",
]
