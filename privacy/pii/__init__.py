"""PII scrubbing of site text before tokenization (Microsoft Presidio, offline)."""

from .engine import (
    DEFAULT_ENTITIES,
    STRUCTURED_ENTITIES,
    PIIConfig,
    PIIError,
    PIIMode,
    Scrubber,
    load_site_key,
)

__all__ = [
    "DEFAULT_ENTITIES",
    "STRUCTURED_ENTITIES",
    "PIIConfig",
    "PIIError",
    "PIIMode",
    "Scrubber",
    "load_site_key",
]
