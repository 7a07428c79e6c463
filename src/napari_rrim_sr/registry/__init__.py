"""Networks and weights: what exists, how it is stored and loaded, and which model a run uses."""
