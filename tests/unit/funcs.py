"""Tiny stage functions for unit tests (imported, never run by Ray here)."""


def make() -> dict:
    return {"out": 1}


def use(x: int, k: int = 1) -> dict:
    return {"y": x * k}


def fit(tag: str = "a") -> dict:
    """Stands for a training stage (the registry executor tests produce its model themselves)."""
    return {"model": tag}
