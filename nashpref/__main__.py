"""`python -m nashpref …` is the `nashpref` command (torchrun runs it as `torchrun … -m nashpref train …`)."""

import sys

from nashpref.cli import main

if __name__ == "__main__":
    sys.exit(main())
