"""One module per stage of the pipeline (extract, cluster, adapt, fuse, evaluate) and the engines
they share (embedding, the image caches, the duplicate check, model names).
"""
