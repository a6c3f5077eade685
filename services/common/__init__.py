"""Code the services share: settings, contracts, the broker loop, logging."""
