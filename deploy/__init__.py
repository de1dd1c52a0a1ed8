"""Deployment manifests generated from a model repository (Kubernetes, KServe)."""
