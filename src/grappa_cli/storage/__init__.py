"""Where bytes go: the zarr store, atomic file writes, injected write faults, disk-error messages."""
