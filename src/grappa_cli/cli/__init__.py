"""The ``grappa`` command line: thin Typer commands that parse, call a stage and print."""
