"""Locations of files that ship beside the package (data contracts, DeepSpeed configs)."""

from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parent
REPO_ROOT = PACKAGE_ROOT.parent
