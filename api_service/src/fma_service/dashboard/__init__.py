"""The experiments dashboard: HTML pages where a developer watches and analyses her experiments."""
