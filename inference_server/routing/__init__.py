"""Traffic management: how a request for a routed model picks the version that serves it."""
