"""Built-in retrieval tasks (dataset readers), registered like any plugin.

The six MRT datasets (``aircraft``, ``cars``, ``cub``, ``flowers``, ``food101``,
``products``), the zero-shot datasets of appendix B (``dtd``, ``eurosat``, ``pets``) and
``imagefolder`` for any ``class/image`` tree. Readers import torchvision only in ``load``.
"""

from __future__ import annotations

from grappa_cli.hookspecs import Register, hookimpl


@hookimpl
def register_tasks(register: Register) -> None:
    from grappa_cli.data.tasks.cub import CUBTask
    from grappa_cli.data.tasks.imagefolder import ImageFolderTask
    from grappa_cli.data.tasks.products import ProductsTask
    from grappa_cli.data.tasks.torchvision_tasks import READERS

    for reader in (*READERS, CUBTask, ProductsTask, ImageFolderTask):
        register(reader())
