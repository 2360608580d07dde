"""The base of every config model: :class:`StrictModel` (unknown keys refused, secret references
only where they are resolved)."""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, ValidationInfo, field_validator

from raypipe.secrets import first_reference, reference_errors

#: Where a secret reference is resolved (see :mod:`raypipe.secrets`), for the error elsewhere.
REFERENCE_FIELDS = (
    "a pipeline's `metadata`, its stages' `params` (a deploy stage's: only its `auth` tokens, "
    "`force_variant.token` and `secret`), `tracking` and `ray.runtime_env`"
)


class StrictModel(BaseModel):
    """A pydantic model that refuses unknown keys and validates its defaults too.

    A secret reference (``${env:NAME}``, ``${file:PATH}``) is kept as written and resolved
    where the value is used, so only the fields in ``reference_fields`` (``"*"``: all) may
    hold one; in any other field it would never be resolved, and is an error."""

    model_config = ConfigDict(extra="forbid", validate_default=True)
    reference_fields: ClassVar[frozenset[str]] = frozenset()

    @field_validator("*", mode="after")
    @classmethod
    def _secret_references(cls, value: Any, info: ValidationInfo) -> Any:
        if info.field_name in cls.reference_fields or "*" in cls.reference_fields:
            errors = reference_errors(value)
            if errors:
                raise ValueError(errors[0])
        else:
            found = first_reference(value)
            if found is not None:
                raise ValueError(
                    f"{found}: a secret reference is resolved only in {REFERENCE_FIELDS}; write this value as it is"
                )
        return value
