"""The pipeline: the plan of every artifact (`planner`), `run`, `status`, the time estimate, and
the stages themselves (`stages/`).
"""
