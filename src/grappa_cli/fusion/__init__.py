"""Step 3 of the paper: fusion strategies that turn N adaptor sets into one model M*."""
