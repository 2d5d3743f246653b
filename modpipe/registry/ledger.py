"""The alias ledger: every alias move (publish promotion, challenger, rollback, manual promote) as a registered-model
tag in the registry itself, so it works against any tracking URI (a SQLite file, a server) and travels with it.

Tag ``alias_move.<time_ns:019d>-<8 hex>`` = JSON ``{"id", "time" (UTC ISO 8601), "alias", "from", "to", "reason",
"kind" (publish | challenger | promote | rollback), "run_id", "user", "undoes"}``; ``from``/``to`` are version
numbers as strings, or null (no alias before / alias removed). Keys sort by time; two publishers never write the
same key. Reading the history is one ``get_registered_model`` call.

- ``move``: set (or remove) the alias and append the entry (the caller holds ``Store.writing()``);
- ``history``: newest first; ``at``: the version an alias pointed to at a time (replaying the ledger);
- ``rollback``: undo the latest move of the alias that is not a rollback and not already undone (so repeated
  rollbacks walk back one promotion at a time), recorded as a move of kind ``rollback``.
"""

from __future__ import annotations

import datetime as dt
import getpass
import json
import os
import secrets
import time
from typing import Any

from modpipe.registry.names import check_alias, check_name
from modpipe.registry.store import RegistryError, Store

PREFIX = "alias_move."
MAX_REASON = 4000


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return os.environ.get("USER", "unknown")


def _iso(ns: int) -> str:
    return dt.datetime.fromtimestamp(ns / 1e9, dt.timezone.utc).isoformat(timespec="microseconds")


def parse_time(text: str) -> dt.datetime:
    """ISO 8601 (``Z`` allowed); a time without a zone is UTC."""
    t = dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00").replace("z", "+00:00"))
    return t if t.tzinfo else t.replace(tzinfo=dt.timezone.utc)


def entries(store: Store, name: str) -> list[dict[str, Any]]:
    """Every ledger entry of ``name``, oldest first."""
    out = []
    for key, value in sorted(store.model_tags(check_name(name, "registered model name")).items()):
        if key.startswith(PREFIX):
            try:
                e = json.loads(value)
            except ValueError:
                continue
            if isinstance(e, dict):
                out.append({**e, "id": key.removeprefix(PREFIX)})
    return out


def history(store: Store, name: str, alias: str | None = None) -> list[dict[str, Any]]:
    """The moves of ``name`` (of one alias when given), newest first."""
    return [e for e in reversed(entries(store, name)) if alias is None or e.get("alias") == alias]


def move(store: Store, name: str, alias: str, to: str | None, reason: str, kind: str, run_id: str | None = None,
         undoes: str | None = None) -> dict[str, Any] | None:
    """Point ``alias`` at version ``to`` (None: remove it) and append the move; None when it already points there.
    Call inside ``store.writing()`` so the read of ``from`` and the write are one step for SQLite stores."""
    check_name(name, "registered model name")
    check_alias(alias)
    before = store.alias_version(name, alias)
    to = None if to is None else str(to)
    if before == to:
        return None
    client = store.client
    if to is None:
        store.retry(client.delete_registered_model_alias, name, alias)
    else:
        store.version(name, to)  # exists
        store.retry(client.set_registered_model_alias, name, alias, to)
    ns = time.time_ns()
    entry = {"time": _iso(ns), "alias": alias, "from": before, "to": to, "reason": str(reason)[:MAX_REASON],
             "kind": kind, "run_id": run_id, "user": _user(), "undoes": undoes}
    key = f"{PREFIX}{ns:019d}-{secrets.token_hex(4)}"
    store.retry(client.set_registered_model_tag, name, key, json.dumps(entry, sort_keys=True))
    return {**entry, "id": key.removeprefix(PREFIX)}


def at(store: Store, name: str, alias: str, when: dt.datetime | str) -> str | None:
    """The version ``alias`` pointed to at ``when`` (None: no version)."""
    when = parse_time(when) if isinstance(when, str) else when
    version = None
    for e in entries(store, name):
        if e.get("alias") == alias and parse_time(e["time"]) <= when:
            version = e.get("to")
    return version


def rollback(store: Store, name: str, alias: str, reason: str = "", run_id: str | None = None) -> dict[str, Any]:
    """One step back for ``alias`` (see the module docstring); raises RegistryError when nothing is left to undo."""
    with store.writing():
        log = [e for e in entries(store, name) if e.get("alias") == alias]
        undone = {e.get("undoes") for e in log if e.get("undoes")}
        target = next((e for e in reversed(log) if e.get("kind") != "rollback" and e["id"] not in undone), None)
        if target is None:
            raise RegistryError(f"{name}@{alias}: no move left to roll back")
        current = store.alias_version(name, alias)
        why = reason or f"rollback of {target['kind']} {target.get('from')} -> {target.get('to')} ({target['time']})"
        if current != target.get("to"):
            why += f"; alias was at {current}, not {target.get('to')}"
        entry = move(store, name, alias, target.get("from"), why, "rollback", run_id, undoes=target["id"])
        if entry is None:  # already there: still record that the move is undone
            ns = time.time_ns()
            entry = {"time": _iso(ns), "alias": alias, "from": current, "to": current, "reason": why,
                     "kind": "rollback", "run_id": run_id, "user": _user(), "undoes": target["id"]}
            key = f"{PREFIX}{ns:019d}-{secrets.token_hex(4)}"
            store.retry(store.client.set_registered_model_tag, name, key, json.dumps(entry, sort_keys=True))
            entry["id"] = key.removeprefix(PREFIX)
        return entry


def promote(store: Store, name: str, version: str, alias: str, reason: str, run_id: str | None = None) -> dict:
    """A manual move of ``alias`` to ``version`` (recorded even when the reason is the only news)."""
    if not reason.strip():
        raise RegistryError("a manual promotion needs a reason")
    with store.writing():
        entry = move(store, name, alias, str(version), reason, "promote", run_id)
    if entry is None:
        raise RegistryError(f"{name}@{alias} already points to version {version}")
    return entry
