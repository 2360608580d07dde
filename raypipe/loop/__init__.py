"""The closed loop of a served app: drift -> retraining through the scheduler -> evaluation
gate -> canary -> promotion or rollback, with one lineage record from the drift event to the
model that replaced the old one.

* :mod:`~raypipe.loop.cut`: the retraining pipeline (pure).
* :mod:`~raypipe.loop.core`: the state machine over ports (pure).
* :mod:`~raypipe.loop.actor`: the controller actor and its real ports.
* :mod:`~raypipe.loop.reference`: the drift monitor's reference variant and profile.
* :mod:`~raypipe.loop.arming`: deploy + monitor + loop, shutdown.
* :mod:`~raypipe.loop.status`: find, stop, report.
"""
