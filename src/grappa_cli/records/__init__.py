"""What was made from what: artifact ids, provenance fingerprints, increments of the training set."""
