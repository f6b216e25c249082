"""Backbones: the offline default vision-language model and its frozen image encoder."""
