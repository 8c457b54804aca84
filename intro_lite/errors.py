"""The project's user-facing errors: each carries one line the CLI prints before exiting non-zero."""


class ConfigError(ValueError):
    """A one-line, user-facing error about the configuration or the inputs it names."""


class TrainingAborted(RuntimeError):
    """A one-line reason to stop a run (the CLI prints it and exits non-zero)."""


class Interrupted(BaseException):
    """SIGTERM (raised by `intro-lite train`'s handler), handled like Ctrl-C: one line, then exit 143."""

    def __init__(self, signum: int):
        super().__init__(f"signal {signum}")
        self.signum = signum


def first_line(e: BaseException) -> str:
    """The first line of an exception's message, or its type's name when the message is empty."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
