"""The downstream's input error. Its configuration is params `finetune` (labelbudget.schema.Finetune)."""

from __future__ import annotations

from labelbudget.errors import LabelbudgetError


class DownstreamInputError(LabelbudgetError, ValueError):
    """Bad input found before any training starts (missing features, unknown layer, empty budget...)."""
