"""Reading answers and scoring completions: the grader, Turkish number words, the rewards. Pure Python, no torch."""
