"""Flower strategies of mpsl-flwr, one algorithm per module, chosen by run-config ``strategy``."""
