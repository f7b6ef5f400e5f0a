"""Ingest: the DICOM storage SCP and the durable spool behind it."""
