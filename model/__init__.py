"""cispo.model."""
