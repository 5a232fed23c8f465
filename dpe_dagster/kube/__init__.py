"""Kubernetes side of node pools: which nodes are busy, which instance is which node, cordoning
(`nodes.py`), and how a pod lands on a pool (`pod_spec.py`)."""
