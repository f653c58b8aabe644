"""Train state, optimizer, checkpoints and the one train loop."""
