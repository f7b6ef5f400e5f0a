"""The node's web server: health checks, Prometheus metrics and the ops JSON API.

A thin adapter over the audit repositories (the same functions as ``cad-node audit``), served
by uvicorn on a thread of the node process. Routers are added per concern, so the ops pages
and their login can join the same app.
"""
