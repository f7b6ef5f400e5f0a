"""The pipeline: one job per complete study, analyse then deliver.

The task bodies are plain functions (``tasks``); the embedded in-process queue and the Celery
tasks are thin adapters that call exactly these functions.
"""
