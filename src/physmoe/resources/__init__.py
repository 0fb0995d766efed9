"""Package data: the rule-similarity matrix, space-group frequencies, the embedded structure set."""
