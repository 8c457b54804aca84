"""intro-lite: a lightweight single-node LoRA trainer for InTRO."""

__version__ = "0.1.0"
