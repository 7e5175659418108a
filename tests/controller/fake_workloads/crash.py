"""A workload that crashes without reporting."""

import sys

print("something broke", flush=True)
sys.exit(3)
