"""Training and evaluation: plain loops over the model, the data and the metrics."""
