"""Data: manifests, Debian-packaged audio, corpora, augmentation, datasets."""
