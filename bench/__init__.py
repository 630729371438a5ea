"""Benchmarks that print ratios measured side by side in one run; see bench/README.md."""

import os

# Idle OpenMP workers sleep instead of spinning. On a machine shared with other jobs, spinning workers steal
# the cores the busy ones need, and their spin counts as CPU time; both make timings erratic. This must be
# set before torch loads, which is why it lives here, the first module `python -m bench...` imports.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
