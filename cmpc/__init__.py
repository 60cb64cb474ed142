"""cmpc: Cross-Modal Progressive Comprehension for referring image and video segmentation."""

__version__ = "0.1.0"
