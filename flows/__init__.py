"""Thin Prefect flows over modpipe's one step list (modpipe/steps.py): the whole DAG and one step.

A pipeline runs unattended, often offline: Prefect's usage telemetry is off unless the user turns it on (it
otherwise prints tracebacks when the network is unreachable). Set before Prefect is first imported.
"""

import os

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
