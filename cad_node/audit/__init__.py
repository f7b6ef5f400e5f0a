"""Audit database: every instance, study and state change, for ops to inspect."""
