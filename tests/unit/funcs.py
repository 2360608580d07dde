"""Tiny stage functions for unit tests (imported, never run by Ray here)."""


def make() -> dict:
    return {"out": 1}


def use(x: int, k: int = 1) -> dict:
    return {"y": x * k}
