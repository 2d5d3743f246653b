"""Names that meet the registry, and the only way a value enters an MLflow filter string.

Registered model names (``<model_prefix>-<task>``, ``<model_prefix>-backbone``) and aliases match ``NAME_PATTERN``
(``modpipe.config_base.NAME_PATTERN``); anything else is refused before a store is touched. MLflow's filter strings
have no escape for a quote, so ``literal`` refuses any value outside a small safe alphabet instead of quoting it:
a name with a quote can never break ``registry list`` again. Data (labels, reasons, paths) only goes into tag
*values*, which MLflow stores verbatim.
"""

from __future__ import annotations

import re

from modpipe.config_base import NAME_PATTERN, is_name  # noqa: F401 - is_name re-exported
_LITERAL = re.compile(r"[A-Za-z0-9_.:@/+=-]{0,256}")
RESERVED_ALIASES = ("latest",)


class NameError_(ValueError):
    """A name that must not meet the registry."""


def check_name(value: object, what: str = "name") -> str:
    if not is_name(value):
        raise NameError_(f"{what} {value!r} is not a valid name (must match {NAME_PATTERN})")
    return str(value)


def check_alias(value: object) -> str:
    check_name(value, "alias")
    if value in RESERVED_ALIASES or re.fullmatch(r"v\d+", str(value)):
        raise NameError_(f"alias {value!r} is reserved by MLflow (latest, v<number>)")
    return str(value)


def literal(value: str) -> str:
    """``value`` as a single-quoted MLflow filter literal; refuses anything that could end the quote."""
    if not isinstance(value, str) or not _LITERAL.fullmatch(value):
        raise NameError_(f"refusing {value!r} in a registry filter (only [A-Za-z0-9_.:@/+=-] are allowed)")
    return f"'{value}'"


def model_name(prefix: str, task: str) -> str:
    """``<prefix>-<task>``, checked."""
    return check_name(f"{check_name(prefix, 'model_prefix')}-{check_name(task, 'task name')}", "registered model name")


def backbone_name(prefix: str) -> str:
    return check_name(f"{check_name(prefix, 'model_prefix')}-backbone", "registered model name")
