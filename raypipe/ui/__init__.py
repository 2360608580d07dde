"""``raypipe ui``: read-only web pages on the metadata store (runs and their DAGs, stage logs
and artifacts, models with their lineage and training curves), each with a JSON twin under
``/api``.  :func:`create_app` builds the ASGI app, :func:`serve` runs it (see :mod:`raypipe.ui.app`)."""

from raypipe.ui.app import UiSettings, create_app, serve

__all__ = ["UiSettings", "create_app", "serve"]
