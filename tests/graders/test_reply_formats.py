"""Every parser's error message states the required format (it is shown to the model when re-asking)."""
from __future__ import annotations

import pytest

from difflens.graders.coherence import parse_coherence
from difflens.graders.hypothesis import parse_grade
from difflens.graders.relevance import parse_relevance
from difflens.graders.scale import parse_patchscope_scale
from test_scale_grader import OFFERED


# --------------------------------------------------------------------------------------------
# Parsers compose with LLMClient.ask: error messages state the format
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "parser, reply, needle",
    [
        (parse_coherence, "fine", "ANSWER: COHERENT"),
        (lambda r: parse_relevance(r, 2), "ANSWER[1]: RELEVANT", "ANSWER[i]"),
        (parse_grade, "SCORE: 9", "SCORE: <n>"),
        (lambda r: parse_patchscope_scale(r, OFFERED), "BEST_SCALE: 2", "TOKENS"),
    ],
)
def test_parser_errors_state_the_format(parser, reply, needle):
    with pytest.raises(ValueError) as ei:
        parser(reply)
    assert needle in str(ei.value)
