"""The training of one run: its recipe, the methods it trains, their objectives, data
and checkpoints."""
