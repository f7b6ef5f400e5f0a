"""Model inference: preprocessing shared with training, model execution and result mapping."""
