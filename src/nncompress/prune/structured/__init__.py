"""Structured (filter/channel) pruning: criteria, selection, sensitivity, physical removal."""

from nncompress.prune.structured.groups import ChannelGroup, find_groups
from nncompress.prune.structured.masking import channels_masked
from nncompress.prune.structured.removal import remove_channels

__all__ = ["ChannelGroup", "channels_masked", "find_groups", "remove_channels"]
