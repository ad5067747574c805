"""Deployment artefacts checked offline: container images, Kubernetes manifests, alert rules."""
