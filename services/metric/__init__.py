"""The metric service: joins each prediction with its label and records the error."""
