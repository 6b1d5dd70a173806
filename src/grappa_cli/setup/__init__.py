"""Setting a project up: `grappa init`, tasks, and the demo (its datasets and project)."""
