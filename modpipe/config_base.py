"""The base of every config section (frozen, no unknown fields) and the config error type."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class ConfigError(ValueError):
    """A config that does not validate; the message names the offending field."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def unversioned(default, **kw):
    """A field that changes how a step runs or is watched, not what it produces (log intervals, worker counts,
    retry budgets): left out of the step's version, so changing it re-runs nothing."""
    from pydantic import Field

    return Field(default, json_schema_extra={"versioned": False}, **kw)


def versioned_fields(section: BaseModel) -> dict:
    """The section's fields that change a step's output (every field not marked ``unversioned``), as JSON."""
    out = {}
    for name, info in type(section).model_fields.items():
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        if extra.get("versioned", True) is False:
            continue
        value = getattr(section, name)
        if isinstance(value, BaseModel):
            out[name] = versioned_fields(value)
        elif isinstance(value, (list, tuple)) and value and all(isinstance(v, BaseModel) for v in value):
            out[name] = [versioned_fields(v) for v in value]
        else:
            out[name] = _json(value)
    return out


def _json(value):
    from pydantic_core import to_jsonable_python

    return to_jsonable_python(value)
