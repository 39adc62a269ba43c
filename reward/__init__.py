"""cispo.reward."""
