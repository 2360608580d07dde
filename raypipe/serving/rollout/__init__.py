"""Canary rollouts: settings, decisions, the run core and its controller actor."""
