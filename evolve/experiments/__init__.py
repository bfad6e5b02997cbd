"""Consumers of GA output: baselines, comparison, plots, the amplify lookahead study."""
