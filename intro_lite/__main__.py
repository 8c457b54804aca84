"""`python -m intro_lite ...` = `intro-lite ...`; torchrun runs the trainer this way (`-m intro_lite train`)."""

from intro_lite.cli import app

app(prog_name="intro-lite")
