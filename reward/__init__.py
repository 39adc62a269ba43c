"""cispo.reward: reward functions. Loading a user's plug-in by dotted or file path
(`loader`), the built-ins, safe execution with timeouts and recorded errors (`worker`),
and the pool of reward worker actors (`pool`). Never imports rollout or the controller."""
