"""Notifications: what happened (a run failed, a gate, a rollout, drift, a loop cycle, a stage
waiting for resources) sent to the webhooks and mail servers of a pipeline's or the platform
config's ``notify:``, in the background (see docs/notifications.md).

:class:`Notifier` is the one delivery path, used by the runner's driver and by the rollout,
loop and drift-monitor actors alike: a bounded queue, one sending thread, retries with
exponential backoff, and a close that waits at most a short flush bound.  No Ray here."""

from raypipe.notify.deliver import SIGNATURE_HEADER, TIMESTAMP_HEADER, sign, verify
from raypipe.notify.events import Notification
from raypipe.notify.notifier import Notifier, effective_sinks, notifier_for

__all__ = [
    "SIGNATURE_HEADER",
    "TIMESTAMP_HEADER",
    "Notification",
    "Notifier",
    "effective_sinks",
    "notifier_for",
    "sign",
    "verify",
]
