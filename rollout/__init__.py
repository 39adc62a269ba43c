"""cispo.rollout: generation. The `RolloutEngine` Protocol (`engine`) and its two
engines (vLLM, the built-in sampler), the engine actors of a job with weight pushes and
the replacement of dead engines (`engines`), and the rollout source both drivers take
trainable groups from (`source`): the buffer and its staleness rule (`buffer`), partial
rollouts (`partial`), the timeline of generate / score / learn / push spans. Imports
`cispo.types` and `cispo.model`; never the controller or the environments."""
