"""Compatibility wrapper: the same command and flags as ``python -m tfdpgan.convert``."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tfdpgan.convert import cli_main  # noqa: E402

if __name__ == "__main__":
    cli_main()
