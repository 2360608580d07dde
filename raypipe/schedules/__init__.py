"""Schedules and triggers: pipelines that run by themselves (see docs/schedules.md).

``core`` decides (pure, an injected clock), ``files`` takes the snapshots ``on_data`` compares
(pure), ``controller`` is the detached actor that ticks every schedule of a metadata store and
starts runs through the closed loop's launch path (:mod:`raypipe.loop.launch`)."""
