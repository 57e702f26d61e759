"""AdaGen: learned adaptive per-step policies for iterative image generators."""

__version__ = "0.1.0"
