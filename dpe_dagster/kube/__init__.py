"""Kubernetes side of node pools: which nodes are busy, which instance is which node, cordoning."""
