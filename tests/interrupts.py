"""For tests that interrupt a child process with SIGINT, as Ctrl-C would."""

import signal


def sigint_default() -> None:
    """`preexec_fn` of such a child: SIGINT back to its default action. A suite started as a `&` job
    of a non-interactive shell has SIGINT ignored, and an ignored signal stays ignored across exec,
    so the child's Python would never raise KeyboardInterrupt."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
