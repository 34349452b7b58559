"""Federated learning in the cloud: ServerApp, SuperLink, simulation, registry hand-off."""
