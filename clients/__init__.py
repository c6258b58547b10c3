"""Flower ClientApp handlers of mpsl-flwr."""
