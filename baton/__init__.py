"""Baton: measured, approved, audited failover and failback runbooks for multi-region Kafka."""

__version__ = "0.1.0"
