"""Rollouts with vLLM: the engine wrapper and the rules and patches it relies on (see docs/engine.md)."""
