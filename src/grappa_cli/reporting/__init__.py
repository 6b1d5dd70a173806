"""The HTML report: retrieval galleries, granularity samples and training curves.

``grappa report`` writes ``reports/index.html`` with these modules: :mod:`.thumbnails` (small
cached copies of the images, under ``reports/assets/``), :mod:`.galleries` (what each model
retrieves for a seeded sample of queries, from the stored embeddings; samples of each
granularity's pseudo-classes), :mod:`.curves` (training losses and attention entropy from the
runs' ``metrics.jsonl``, drawn as inline SVG) and :mod:`.page` (the page itself: one
self-contained file, no script, font or style from the network).
"""
