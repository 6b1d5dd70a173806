"""Step 1 of Grappa: k-means partitions of the training features (pseudo-granularities).

* :mod:`~grappa_cli.clustering.base`: the :class:`Clusterer` protocol every backend plugin
  implements, and :class:`ClusterResult`;
* :mod:`~grappa_cli.clustering.kvalues`: parsing ``--k`` specs (``256,1024``, ``4k``, ``auto``);
* :mod:`~grappa_cli.clustering.vectors`: input checks and L2 normalisation;
* :mod:`~grappa_cli.clustering.seeding`: k-means++ seeding (plain and greedy) over all points;
* :mod:`~grappa_cli.clustering.assign`: exact nearest-centroid assignment and inertia;
* :mod:`~grappa_cli.clustering.faiss_kmeans`, :mod:`~grappa_cli.clustering.sklearn_kmeans`:
  the built-in backends (registered in :mod:`grappa_cli.builtin.clusterers`).

This ``__init__`` imports nothing heavy, so ``grappa --help`` stays light.
"""
