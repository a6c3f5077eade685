"""The model service: predicts one y_pred per features message."""
