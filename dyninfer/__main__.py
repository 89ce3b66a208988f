"""``python -m dyninfer <subcommand>``: same as the ``dyninfer`` console script."""
import sys

from .cli import main

sys.exit(main())
