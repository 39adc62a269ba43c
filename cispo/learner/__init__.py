"""The learner: one DeepSpeed rank per Ray actor (`rank`), the ranks driven as one
learner (`group`), the packed train batch (`batch`) and one update from a step's
samples (`update`)."""
