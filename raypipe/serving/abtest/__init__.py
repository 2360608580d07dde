"""A/B tests: per-variant statistics and reports."""
