"""nbdurable's benchmark suite: `python -m bench` runs it and prints one table of figures vs baselines."""
