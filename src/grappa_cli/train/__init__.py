"""Training machinery shared by adaptor training and fusion training.

* :mod:`~grappa_cli.train.optim.losses`: norm-softmax (eq. 2) and Barlow Twins (eq. 4) losses;
* :mod:`~grappa_cli.train.optim.lars`: LARS as in Barlow Twins, and weight/bias parameter groups;
* :mod:`~grappa_cli.train.optim.schedule`: per-step learning-rate schedules (warm-up, cosine);
* :mod:`~grappa_cli.train.distributed`: torchrun helpers and index sharding;
* :mod:`~grappa_cli.train.loop`: the training loop (:func:`~grappa_cli.train.loop.train`)
  with checkpoint/resume, DDP, AMP and progress; :mod:`~grappa_cli.train.objective` is what
  it optimises.

Submodules import torch at top level; the CLI imports them only inside stage functions.
"""
