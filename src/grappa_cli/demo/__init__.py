"""``grappa demo``: a small project on data that ships with the install, run end to end."""
