"""GrowPanel gateway admin API (control plane): imports gateway, never the reverse."""
