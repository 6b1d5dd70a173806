"""Commands of the pipeline: extract, cache, cluster, adapt, fuse, eval, report, run, status."""
