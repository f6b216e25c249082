"""The training recipe, the methods it trains, and the low-resource benchmark."""
