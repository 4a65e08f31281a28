"""Workers: the runner registry, built-in runners, and the loop that computes trials."""
