"""Drift monitoring of served apps: live traffic against the training data's profile.

Pure (no Ray): :mod:`.statistics` (KS, chi-square, PSI, decisions), :mod:`.drift_tests`
(one module per drift test, registered by name), :mod:`.spec` (``MonitorSpec``),
:mod:`.reference` (references from a profile), :mod:`.detector` (``DriftDetector``),
:mod:`.results`, :mod:`.windows`, :mod:`.debounce`, :mod:`.sampling`, :mod:`.values` and
:mod:`.monitor_core` (the monitor without Ray).  :mod:`.monitor` is the Ray actor and its
get-or-create, lookup and KV configuration.
"""
