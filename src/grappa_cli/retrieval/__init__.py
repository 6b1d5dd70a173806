"""Leave-one-out retrieval metrics (MAP@R, R-Precision, Recall@k) and their exact relevance
computation.
"""
