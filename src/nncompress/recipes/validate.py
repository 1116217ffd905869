"""``from_dict`` for the recipe modules: typed configs from YAML mappings (it lives in
``nncompress.config``, below the techniques, which build their own nested configs too)."""

from nncompress.config import from_dict

__all__ = ["from_dict"]
