"""Delivery: result objects to PACS by C-STORE, with retries and an outbox that loses nothing."""
