"""Cluster access: the port (what the workflows need) and its backends (simulated, kubevirt)."""
