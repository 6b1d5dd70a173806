"""Images and datasets: robust decoding, task readers (DML splits), transforms, caches."""
