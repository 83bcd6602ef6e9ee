"""`python -m minigen ...` runs the `minigen` command."""
import sys

from minigen.cli import main

sys.exit(main())
