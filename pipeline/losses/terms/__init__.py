"""One module per loss term; each registers itself with ``@register_term`` (imported on first look-up)."""
