"""cispo.rollout."""
