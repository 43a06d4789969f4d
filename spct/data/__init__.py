"""Items (the one schema every component consumes) and the loaders that produce them."""

from spct.data.formats import CONVERTERS, FORMATS, detect_format
from spct.data.loaders import Items, Source, load_items, load_splits, save_items, to_source
from spct.item import DataError, Item, validate

__all__ = ["CONVERTERS", "FORMATS", "DataError", "Item", "Items", "Source", "detect_format", "load_items",
           "load_splits", "save_items", "to_source", "validate"]
