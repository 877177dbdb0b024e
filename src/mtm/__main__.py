"""``python -m mtm``."""

from mtm.cli import main

main()
