"""GrowPanel API gateway: the data plane and the core the admin API reuses."""
