"""The one greedy generation engine, shared by evaluation and Serve.

`loaded_slm.py` (the base SLM and its adapters in one PEFT model), `prefill.py` (each prompt in
pieces), `running_batch.py` (the rows decoding together in preallocated key/value buffers,
`cache_layers.py`), `prefix_cache.py` (shared prompt prefixes kept), `scheduler.py` (admission,
chunked prefill, one decode step per model), `engine.py` (`SlmEngine`, the engine interface
evaluation uses).
"""
