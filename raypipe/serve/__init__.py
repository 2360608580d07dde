"""Serving registered model versions on Ray Serve: weighted sticky traffic splits,
per-variant metrics, A/B statistics and canary rollouts (issue 7)."""
