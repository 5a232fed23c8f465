"""`dpe simulate`: a discrete-event replay of job traces through the production control step and
the baseline policies. Needs the `sim` extra (NumPy, Matplotlib)."""

# The policies a replay compares, by name (`sim/run.py` builds them).
POLICIES = ("dpe", "dpe-prewarm", "reactive", "consolidating", "static-peak", "static-p95")
