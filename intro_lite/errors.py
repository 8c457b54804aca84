"""The project's user-facing errors: each carries one line the CLI prints before exiting non-zero."""


class ConfigError(ValueError):
    """A one-line, user-facing error about the configuration or the inputs it names."""


class TrainingAborted(RuntimeError):
    """A one-line reason to stop a run (the CLI prints it and exits non-zero)."""
