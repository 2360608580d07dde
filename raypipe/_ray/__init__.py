"""The one seam to Ray's private and cluster-wide APIs (KV, detached actors, the Serve client)."""
