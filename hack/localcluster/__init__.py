"""The test control plane (see cluster.py)."""

from .cluster import ClusterError, LocalCluster, build_binaries, free_port, metadata_audit_policy

__all__ = ["ClusterError", "LocalCluster", "build_binaries", "free_port", "metadata_audit_policy"]
