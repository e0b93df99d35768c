"""Bundled YAML recipes (pretraining configurations); `maebench pretrain --recipe NAME` finds them here."""
