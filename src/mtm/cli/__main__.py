"""``python -m mtm.cli``, as before the CLI became a package (``python -m mtm`` is the usual)."""

from . import main

main()
