"""grappa-hkmeans: a hierarchical k-means clusterer plugin for grappa (``--backend hkmeans``)."""

__version__ = "0.1.0"
