"""Scoring (`score`, used by training too), the `intro-lite eval` command (`targets`, `run`) and its tables (`report`)."""
