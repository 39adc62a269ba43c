"""The algorithm: policy losses (CISPO and the objectives it is compared with) and the
frozen `LossSpec` the learner applies, advantage estimators, M1's and DAPO's training
controls (dynamic sampling, overlong shaping, the length curriculum), and diagnostics.
Losses and advantages are small pure functions in registries; add one with
`@register_loss` / `@register_advantage`."""
