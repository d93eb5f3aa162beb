"""How a shell starts a command, for the tests that signal one."""

from __future__ import annotations

import signal


def background_shell() -> None:
    """`preexec_fn` for a command started as `cmd &` in a script starts it (and as a test runner started that
    way passes on): SIGINT ignored, which Python keeps unless the command takes it back."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
