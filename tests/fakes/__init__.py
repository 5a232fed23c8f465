"""Fakes of outside services that cannot run here (a Kubernetes API) or that must fail on demand (AWS)."""
