"""`python -m mmrec.cli ...` (what `accelerate launch -m mmrec.cli embed ...` runs) is `mmrec ...`."""

import sys

from mmrec.cli import main

sys.exit(main())
