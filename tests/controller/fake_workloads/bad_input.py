"""A workload that found bad input: it reported it and exits 2, as run_main does."""

import sys

sys.exit(2)
