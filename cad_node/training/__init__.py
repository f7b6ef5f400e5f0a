"""Training and evaluation of the node's image classifiers (``cad-node train`` / ``evaluate``)."""
