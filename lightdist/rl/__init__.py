"""Reinforcement learning: environments, replay, experience data modules, Q-networks, the DQN task."""
