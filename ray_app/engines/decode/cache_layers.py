"""transformers' key/value cache as the engine uses it: the keyword a model takes it by, its layers'
tensors, and a layer over a preallocated buffer that a decode step writes in place."""

from __future__ import annotations

import functools
import inspect


def cache_keyword(model) -> str:
    """transformers renamed `past_key_values` to `cache` within 5.x; use the name the model takes."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return _cache_keyword(type(base))


@functools.cache
def _cache_keyword(model_class) -> str:
    return "cache" if "cache" in inspect.signature(model_class.forward).parameters else "past_key_values"


def layer_tensors(cache) -> tuple:
    """((keys, values), ...) per layer. Later updates concatenate into new tensors, so these stay as they are."""
    return tuple((layer.keys, layer.values) for layer in cache.layers)


@functools.cache
def preallocated_layer_class():
    """Built on first use: transformers is imported only when a model runs."""
    from transformers.cache_utils import DynamicLayer

    class PreallocatedLayer(DynamicLayer):
        """A cache layer over a fixed buffer: `update` writes the new step in place and returns views."""

        def __init__(self, keys, values, filled: int):
            super().__init__()
            self.buffer_keys, self.buffer_values, self.filled = keys, values, filled
            self.device, self.is_initialized = keys.device, True
            self._expose()

        def _expose(self) -> None:
            self.keys = self.buffer_keys[:, :, : self.filled]
            self.values = self.buffer_values[:, :, : self.filled]

        def update(self, key_states, value_states, *args, **kwargs):
            new = key_states.shape[-2]
            self.buffer_keys[:, :, self.filled : self.filled + new] = key_states
            self.buffer_values[:, :, self.filled : self.filled + new] = value_states
            self.filled += new
            self._expose()
            return self.keys, self.values

        def keep_slots(self, keep: list[int], padding: int) -> None:
            """Keep the batch rows at `keep` (ascending), copied down to the first slots of the same buffers,
            and drop the first `padding` columns (padding no kept row uses): no new buffers, so no memory
            that was never touched (on a VM a first touch costs the host's page fault too)."""
            for buffer in (self.buffer_keys, self.buffer_values):
                for slot, kept in enumerate(keep):
                    if slot != kept:  # kept ≥ slot: a row is copied down before its own slot is written
                        buffer[slot, :, : self.filled] = buffer[kept, :, : self.filled]
            self.buffer_keys = self.buffer_keys[: len(keep), :, padding:]
            self.buffer_values = self.buffer_values[: len(keep), :, padding:]
            self.filled -= padding
            self._expose()

        def shift_right(self, shift: int, scratch) -> None:
            """Move the written columns `shift` to the right (`scratch`: a tensor shaped like them)."""
            for buffer in (self.buffer_keys, self.buffer_values):
                scratch.copy_(buffer[:, :, : self.filled])  # the two ranges overlap: copy through scratch
                buffer[:, :, shift : self.filled + shift] = scratch
            self.filled += shift
            self._expose()

    return PreallocatedLayer
