"""`python -m whaleray_demo`: the loopback demo (see run.py)."""

import sys

from whaleray_demo.run import main

sys.exit(main(sys.argv[1:]))
