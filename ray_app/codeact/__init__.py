"""Phase II: the teacher as a CodeAct agent, its trajectories checked, filtered and turned into data.

`loop.py` runs trajectories on any chat engine (`simulated_teacher.py` offline), `sandbox.py` runs
their code, `tasks.py` builds the tasks and `answer_check.py` checks them, `capture.py` is the
`slm-swap capture` step; the trace shape, the filter and the dataset builder sit beside them.
"""
