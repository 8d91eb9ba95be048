"""Engine helpers that need no model."""

import pytest

from hotmem.llama.constrain import repeated_array_item


@pytest.mark.parametrize(
    "text, repeated",
    [
        ('{"e": ["Anna", "Tom", "Anna"', True),           # a string item seen before, just completed
        ('{"e": ["Anna", "Tom", "Anna", ', False),        # already past it: the grammar decides now
        ('{"e": ["Anna", "Tom", "Ann', False),            # still inside the string
        ('{"r": [{"s": "a", "p": "x"}, {"s": "a", "p": "x"}', True),   # repeated object
        ('{"r": [{"s": "a", "p": "x"}, {"s": "a", "p": "y"}', False),
        ('{"a": ["x"], "b": ["x"', False),                # same value in another array is fine
        ('{"e": ["say \\"hi\\"", "say \\"hi\\""', True),  # escaped quotes do not end strings
        ('{"e":[["Lars","PERSON"],["Lars","FOOD"],["Lars","FOOD"]', True),  # the student's tuples are items
        ('{"e":[["Lars","PERSON"],["Lars","FOOD"]', False),
        ('{"r":[["Ann","friends_with","Ann"]', False),       # a tuple's own strings may repeat
        ('{"r":[["Ann","likes","tea"],["Ann","likes","tea"]', True),
    ],
)
def test_repeated_array_item(text, repeated):
    assert repeated_array_item(text) is repeated


def test_a_served_model_that_enforces_schemas_gets_them():
    from hotmem.lm import SchemaEnforcingLM, make_lm

    plain = make_lm("openai/my-local-qwen", api_base="http://127.0.0.1:8000/v1", api_key="-")
    served = make_lm("openai/my-local-qwen", api_base="http://127.0.0.1:8000/v1", api_key="-", enforces_schema=True)
    assert not plain.supports_response_schema  # LiteLLM does not know the model: DSPy would send bare JSON mode
    assert isinstance(served, SchemaEnforcingLM) and served.supports_response_schema
    assert "response_format" in served.supported_params
    assert served.kwargs["api_base"] == "http://127.0.0.1:8000/v1"


@pytest.mark.parametrize(
    "text, endings",
    [
        ('{"s": ["Anna", "Tom", "Anna', ['"']),                     # closing this string repeats "Anna"
        ('{"s": ["Anna", "Tom", "Ann', ['a"']),                     # ... and so does writing 'a"'
        ('{"s": ["Kids are in school.", "Kids are in school', ['."']),  # Qwen writes '.","' as one token
        ('{"s": ["Anna", "Tom", "Anna is', []),                    # a longer item may go on
        ('{"s": ["Anna", "Tom", "B', []),                          # nothing written so far repeats
        ('{"e": [{"n": "a", "t": "X"}, {"n": "a", "t": "X', ['"}']),  # the object would repeat
        ('{"e": [{"n": "a", "t": "X"}, {"n": "a", "t": "X"', ["}"]),
        ('{"e": [{"n": "a", "t": "X"}, {"n": "a", "t": "Y', []),
        ('{"n": "a", "m": "a', []),                                # not an array item
        ('{"e":[["Lars","FOOD"],["Lars","FO', ['OD"]']),             # the tuple would repeat
        ('{"e":[["Lars","FOOD"],["Lars","FOOD"', [']']),
        ('{"e":[["Lars","FOOD"],["Lars', []),                      # its first string is no item of its own
        ('{"r":[["Ann","likes","Ann', []),
    ],
)
def test_closing_repeats_names_the_endings_that_would_repeat_an_item(text, endings):
    from hotmem.llama.constrain import closing_repeats

    assert closing_repeats(text) == endings


def test_item_endings_are_read_off_the_merged_tokens():
    from hotmem.llama.constrain import item_ending_then_comma

    assert item_ending_then_comma('","') == '"' and item_ending_then_comma('", ') == '"'
    assert item_ending_then_comma('.","') == '."'
    assert item_ending_then_comma('"},{"') == '"}' and item_ending_then_comma(" },") == "}"
    assert item_ending_then_comma('"],["') == '"]' and item_ending_then_comma("],") == "]"
    assert item_ending_then_comma(' ",') == ' "'  # inside a string a leading space is content
    for piece in ('"]', '"', '"]}', "school", ","):
        assert item_ending_then_comma(piece) is None


def test_a_repeated_line_lets_only_the_end_of_the_answer_follow():
    import numpy as np

    from hotmem.llama.constrain import _EndAfterRepeatedLine

    pieces = {0: "a|PERSON", 1: "\n", 2: "b|PERSON", 3: "<end>"}

    class Vocabulary:  # detokenizes as llama-cpp-python's Llama does
        def detokenize(self, tokens):
            return "".join(pieces[t] for t in tokens).encode()

    guard, scores = _EndAfterRepeatedLine(Vocabulary(), end_tokens=[3]), np.zeros(4, dtype=np.float32)
    prompt = [2, 2]
    assert np.isfinite(guard(prompt, scores)).all()  # the first call learns where the answer starts
    assert np.isfinite(guard(prompt + [0, 1, 2, 1], scores)).all()  # two different lines
    assert np.isfinite(guard(prompt + [0, 1, 2, 1, 0], scores)).all()  # a repeat not yet complete
    ended = guard(prompt + [0, 1, 2, 1, 0, 1], scores)
    assert np.isfinite(ended).tolist() == [False, False, False, True]
