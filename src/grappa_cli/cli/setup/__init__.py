"""Commands that set a project up: init, task, demo, plugins."""
