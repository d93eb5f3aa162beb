"""Constrained decoding in the one engine: a row's answer forced to fit a grammar, rows with and without
constraints decoding in the same batch.

`constraints.py` (what a request asks: the tool-call wrapper over its tools, or JSON for a schema),
`grammar.py` (a constraint as llguidance grammar text: pure), `row_grammar.py` (compiled grammars,
one matcher per row, the masks applied to a batch's logits). The decode engine (`engines/decode/`)
takes a constraint per job (`GenerationJob.constraint`); greedy argmax is kept, the mask only
removes tokens.
"""

from ray_app.engines.constrained.constraints import (
    ConstraintError,
    DecodingConstraint,
    JsonConstraint,
    ToolCallConstraint,
    ToolChoice,
    ToolParameters,
    json_constraint,
    toolcall_constraint,
)

__all__ = [
    "ConstraintError",
    "DecodingConstraint",
    "JsonConstraint",
    "ToolCallConstraint",
    "ToolChoice",
    "ToolParameters",
    "json_constraint",
    "toolcall_constraint",
]
