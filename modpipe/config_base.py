"""The base of every config section (frozen, no unknown fields, no NaN/inf), the config error type, and names.

**Names.** Every name modpipe puts into a path, a registry filter or a tag (task, module, alias, registered model,
run id, step) matches one pattern, ``NAME_PATTERN``: lowercase letters, digits, ``_`` and ``-``, starting with a
letter or digit, at most 64 characters. Config fields that hold names are typed ``Name``; other entry points (a
``--run-id``, a folder name read from disk) call ``check_name``. Data that is not a name (labels, slice values)
is encoded or quoted where it meets a path or a filter, never checked against this pattern.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

NAME_PATTERN = r"[a-z0-9][a-z0-9_-]{0,63}"
_NAME = re.compile(NAME_PATTERN)


class ConfigError(ValueError):
    """A config that does not validate; the message names the offending field."""


def is_name(value: object) -> bool:
    return isinstance(value, str) and _NAME.fullmatch(value) is not None


def check_name(value: object, what: str = "name") -> str:
    """``value`` if it is a safe name (``NAME_PATTERN``), else ValueError naming ``what``."""
    if not is_name(value):
        raise ValueError(f"{what} {value!r} is not a valid name: use 1-64 of a-z 0-9 _ - , starting with a-z or 0-9")
    return value  # type: ignore[return-value]


Name = Annotated[str, AfterValidator(check_name)]
"""A config string that becomes part of a path, a registry filter or a tag."""

# Ranges used across sections (pydantic names the field and the bound in its message).
PositiveInt = Annotated[int, Field(ge=1)]
NonNegativeInt = Annotated[int, Field(ge=0)]
PositiveFloat = Annotated[float, Field(gt=0)]
NonNegativeFloat = Annotated[float, Field(ge=0)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


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
