"""The decide step: teacher vs SLM (and adapted SLMs) per track → decision.json (see decide.py).

`decide.py` (entry `run_decide`), `decision_record.py` (the `Decision` record of decision.json),
`paired_statistics.py` (bootstrap interval, McNemar), `price_table.py` (cost per 1,000 calls).
"""
