"""State capture: which names a cell touched, and how its namespace changed."""
