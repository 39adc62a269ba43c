"""cispo.envs."""
