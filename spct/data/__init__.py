"""Items (the one schema every component consumes) and the loaders that produce them."""

from spct.data.loaders import Items, detect_format, load_items, load_splits, save_items
from spct.item import DataError, Item, validate

__all__ = ["DataError", "Item", "Items", "detect_format", "load_items", "load_splits", "save_items", "validate"]
