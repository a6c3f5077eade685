"""The plot service: draws what the errors look like, from the metrics CSV."""
