"""What training minimises and how: losses, LARS, learning-rate schedules."""
