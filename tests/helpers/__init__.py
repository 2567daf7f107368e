"""What several test files share: running the CLI, and data files written in canonical layouts."""
