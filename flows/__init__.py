"""Thin Prefect flows over modpipe's stage entry functions (one per stage, plus the DAG)."""
