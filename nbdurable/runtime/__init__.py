"""The runtime: runs, steps, checkpoints, replay plans and events. It knows nothing of IPython."""
