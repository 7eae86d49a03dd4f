"""relightflow: photo collection → instruction-based relighting model."""

__version__ = "0.1.0"
