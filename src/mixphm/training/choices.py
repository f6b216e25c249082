"""The names the command line offers: methods and offline backbones. No heavy imports here,
so ``mixphm --help`` and argument errors answer without loading torch."""

ADAPTER_METHODS = ("houlsby", "pfeiffer", "compacter", "adamix", "mixphm")
METHODS = ("full", "bitfit", "lora", "ia3", *ADAPTER_METHODS, "mixphm-ra")
BACKBONES = ("pretrained", "unpretrained")
"""The offline default backbone with and without its vision-language pretraining."""
DATASETS = ("easy-vqa",)
"""Datasets the offline default backbone trains on."""
