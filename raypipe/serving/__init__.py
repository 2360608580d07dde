"""Serving registered model versions on Ray Serve: the spec, the app's control API,
deployments, routing, request validation, metrics, reservations, A/B tests and rollouts."""
