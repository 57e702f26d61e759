"""The AdaGen policy: a small network that reads a generator's features and chooses each step's parameters."""
