"""Rollouts of step-wise generators (and, later, PPO training of their policies)."""
