"""Retrieval tasks: readers of each dataset's own on-disk layout, with the paper's DML split."""
