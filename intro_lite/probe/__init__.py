"""`intro-lite probe`: will InTRO's answer-conditioned teacher give signal on this model and data? (docs/probe.md)

``stats`` holds the pure statistics, ``run`` the rollouts and passes, ``report`` the table and the PNG."""
