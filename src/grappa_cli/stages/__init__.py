"""Pipeline stages: each takes a project and parameters, does the work, returns data.

Stages never print; they report progress through a :class:`grappa_cli.console.Reporter`.
"""
