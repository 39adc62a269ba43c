"""cispo.envs: tasks and environments. The `Task` Protocol and its registry (`task`),
the built-in tasks (addition, the synthetic SWE set), SWE-bench instances and their
grading in hardened Docker sandboxes (`sandbox`, `pool`, `grading`,
`grading_controller`), and the multi-turn agent loop (`agent`). Never imports the
controller; may import `cispo.reward`."""
