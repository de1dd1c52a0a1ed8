"""The bulk-embed application behind ``tritonvision embed``."""
