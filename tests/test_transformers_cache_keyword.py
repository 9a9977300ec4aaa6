"""The engine passes its KV cache under the keyword the installed transformers takes (issue 34): `cache` where
the model's forward has it (transformers 5.x warns that `past_key_values` is removed in 5.40), else
`past_key_values`. Decoding with a cache must raise no such deprecation warning."""

import warnings

from rlprompt_math.engines.transformers.decoding import _cache_keyword


def test_the_cache_keyword_follows_the_models_forward():
    class New:
        def forward(self, input_ids=None, cache=None, use_cache=None):
            pass

    class Old:
        def forward(self, input_ids=None, past_key_values=None, use_cache=None):
            pass

    assert _cache_keyword(New) == "cache" and _cache_keyword(Old) == "past_key_values"


def test_decoding_with_a_cache_raises_no_deprecation_warning(tiny_engine):
    texts = ["What is 2 + 3?", "What is 10 - 4? Answer with a number."]
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*past_key_values.*")
        warnings.filterwarnings("error", category=FutureWarning, module="transformers")
        completions = tiny_engine.generate(texts, max_new_tokens=6, use_cache=False)
        scores = tiny_engine.answer_logprobs(texts, ["5", "6"])
    assert len(completions) == 2 and len(scores) == 2
