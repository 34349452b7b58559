"""Federated learning on the device: SuperNode supervision, training policy, LiteRT trainer."""
