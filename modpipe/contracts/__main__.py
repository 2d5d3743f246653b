"""Validate one dataset against one suite from the shell:

    python -m modpipe.contracts DATA --suite NAME_OR_PATH [-c config.yaml] [-s contracts.max_duplicate_rate=0.05]
                                [--tokenizer tokenizer.json] [--name my/data]

DATA is a Parquet/JSONL[.gz]/CSV file or a folder of them.  Prints each failed expectation and the Data Docs
index; exits 1 when an error-severity expectation failed, 2 on a bad suite or unreadable data.
"""

from __future__ import annotations

import argparse
import logging
import sys

from modpipe.config import load_config
from modpipe.contracts import ContractViolation, SuiteError, describe, validate_path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m modpipe.contracts", description=__doc__.split("\n\n")[0])
    ap.add_argument("data", help="Parquet/JSONL[.gz]/CSV file or folder")
    ap.add_argument("--suite", required=True, help="suite name in contracts.suites_dir, or a suite JSON path")
    ap.add_argument("-c", "--config", help="YAML merged over the defaults")
    ap.add_argument("-s", "--set", action="append", default=[], help="override, e.g. contracts.max_rows=5000")
    ap.add_argument("--tokenizer", help="tokenizer.json for n_tokens (e.g. a curate output's tokenizer)")
    ap.add_argument("--name", help="data name shown in Data Docs (default: file stem)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cfg = load_config(args.config, args.set)
    try:
        summary = validate_path(args.data, args.suite, cfg, tokenizer=args.tokenizer, data_name=args.name)
    except ContractViolation as err:
        print(err, file=sys.stderr)
        return 1
    except (SuiteError, OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for w in summary["warnings"]:
        print(f"warning: {describe(w)}")
    print(f"ok: {summary['rows_validated']} of {summary['rows_total']} rows, {len(summary['expectations'])} "
          f"expectation(s), {len(summary['warnings'])} warning(s); Data Docs: {summary['data_docs']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
