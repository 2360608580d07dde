"""Drift tests, one module each, registered by name in :mod:`.registry`.

A test is a :class:`~raypipe.monitoring.drift_tests.base.DriftTest`: its name, the column
kinds it applies to, how its result is decided (a p-value against a level, or a statistic
against a threshold), what it keeps of a feature's reference and the test of one window.
Adding one: a module with the class, and its ``(name, "module:Class")`` row in
:data:`~raypipe.monitoring.drift_tests.registry.DRIFT_TESTS`; the spec accepts the name
(``numeric_method``, ``categorical_method``, ``overrides.<feature>.method``) and the
detector runs it.
"""
