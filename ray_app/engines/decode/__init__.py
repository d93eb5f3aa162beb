"""The one greedy generation engine, shared by evaluation and Serve.

`loaded_slm.py` (the base SLM and its adapters in one PEFT model), `running_batch.py` (prefill in
pieces, the rows decoding together in preallocated key/value buffers), `prefix_cache.py` (shared
prompt prefixes kept), `scheduler.py` (admission, chunked prefill, one decode step per model),
`engine.py` (`SlmEngine`, the engine interface evaluation uses).
"""
