"""The decide step: teacher vs SLM (and adapted SLMs) per track → decision.json (see decide.py).

`decide.py` (entry `run_decide`), `decide_config.py` (its settings, error and the eval command of each
label), `model_results.py` (one label's results read, checked and re-scored), `decision_record.py` (the
`Decision` record of decision.json), `paired_statistics.py` (bootstrap interval, McNemar),
`non_inferiority.py` (the parity verdict), `price_table.py` (cost per 1,000 calls).
"""
