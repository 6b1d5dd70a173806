"""``python -m grappa_cli`` is the same as the ``grappa`` command."""

from grappa_cli.cli.app import main

if __name__ == "__main__":
    main()
