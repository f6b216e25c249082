"""Vision-language pretraining of the offline default backbone on a generated corpus."""
