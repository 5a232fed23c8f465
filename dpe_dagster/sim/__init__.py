"""`dpe simulate`: a discrete-event replay of job traces through the production control step and
the baseline policies (`sim/policies.py` names them). Needs the `sim` extra (NumPy, Matplotlib)."""
