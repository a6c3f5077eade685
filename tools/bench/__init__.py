"""`modelwatch bench`: the real services against the real broker, beside a bare reference."""
