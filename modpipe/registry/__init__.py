"""The module registry (MLflow): the publish step, the promotion policy, the alias ledger, loading by alias.

- ``policy.py``: the one check (integrity, compatibility, quality) used by the gate and every loader;
- ``publish.py``: the ``publish`` step (``run(cfg, ctx)``) and ``publish(...)``: gate, register (the backbone as
  ``<prefix>-backbone``, each module as a version of ``<prefix>-<task>`` linked to it, with a models-from-code
  pyfunc), decide ``champion`` / ``challenger``;
- ``ledger.py``: every alias move, kept as registered-model tags (history, rollback, ``at``, manual promote);
- ``load.py``: ``load("NAME@ALIAS")`` from the tracking URI alone, ``verify``;
- ``store.py``: the MLflow client, the SQLite writers' lock, retries, the verified download cache;
- ``names.py``: the name pattern and the only way a value enters a filter string;
- ``matrix.py``: the compatibility matrix of registered modules x registered backbones.
"""

from modpipe.registry.load import LoadedModule, load, parse_ref
from modpipe.registry.policy import PolicyError, Rules, Verdict, check
from modpipe.registry.publish import candidates, list_modules, publish, run, store_of, tracking_uri
from modpipe.registry.store import RegistryError, Store


def model_name(cfg, task: str) -> str:
    from modpipe.registry.names import model_name as _name

    return _name(cfg.publish.model_prefix, task)


def resolve(cfg, task: str, alias_or_version: str | int | None = None) -> str:
    """Local path of a registered module's files (fetched into the cache) after the one check."""
    from modpipe.registry.load import resolve as _resolve

    ref = cfg.publish.alias if alias_or_version is None else str(alias_or_version)
    sep = "/" if ref.isdigit() else "@"
    return _resolve(store_of(cfg), f"{model_name(cfg, task)}{sep}{ref}")


__all__ = ["LoadedModule", "PolicyError", "RegistryError", "Rules", "Store", "Verdict", "candidates", "check",
           "list_modules", "load", "model_name", "parse_ref", "publish", "resolve", "run", "store_of",
           "tracking_uri"]
