"""Shared fixtures: a tiny randomly initialised Llama model with a tokenizer built offline, and the helpers
that tests share (as fixtures, so no test imports this file)."""

from __future__ import annotations

import contextlib

import pytest
import torch

CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

CORPUS = [
    "What is 36+32? The answer is 68.", "Let's think step by step.", "Answer with only the final number.",
    "Give the answer as a single number.", "Tom has 3 apples and buys 5 more. How many apples?",
    "Solve for x: 2x + 3 = 11. x = 4", "What is 15% of 80? 12", "What is 3/4 + 1/8? 7/8",
    "0 1 2 3 4 5 6 7 8 9 + - * / = ( ) . , ? ! # $ % \\boxed{42} #### 42 Final answer: 10",
]


def build_tiny_model(path, *, seed: int = 0, vocab_size: int = 400, hidden_size: int = 32,
                     initializer_range: float = 0.3):
    """Save a tiny random Llama and a byte-level BPE tokenizer (no download) under `path`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS * 20, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|im_start|>",
                                        eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                        unk_token="<|endoftext|>")
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(path)
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=512, initializer_range=initializer_range,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True)
    LlamaForCausalLM(config).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def tiny_model_factory():
    """`build_tiny_model`, for tests that need another tiny model (other sizes or initialisation)."""
    return build_tiny_model


@pytest.fixture(scope="session")
def tiny_engine(tiny_model_dir):
    from rlprompt_math.engines.transformers import TransformersEngine

    return TransformersEngine.load(str(tiny_model_dir), device="cpu", dtype="float32")


@pytest.fixture(scope="session")
def default_engine():
    from rlprompt_math.engines.transformers import TransformersEngine

    return TransformersEngine.load(None, device="cpu", dtype="float32")


@pytest.fixture
def evaluate_repeats_final_comparison():
    """check(run, limit): `run.py evaluate` on a finished run reports the same systems and numbers as
    training's final comparison."""
    return _evaluate_repeats_final_comparison


def _evaluate_repeats_final_comparison(run, limit: int) -> None:
    import json

    from click.testing import CliRunner

    from rlprompt_math.checkpoint import FINAL_EVAL
    from rlprompt_math.cli import main

    result = CliRunner().invoke(main, ["evaluate", str(run), "--limit", str(limit), "--quiet"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    final = json.loads((run / FINAL_EVAL / "report.json").read_text())
    later = json.loads((run / "eval-test" / "report.json").read_text())
    assert list(final["systems"]) == list(later["systems"])
    for name in final["systems"]:
        for key in ("accuracy", "mean_credit"):
            assert final["systems"][name][key] == later["systems"][name][key], (name, key)


@pytest.fixture
def server_killed_mid_run():
    """with server_killed_mid_run(run_dir, stop) as killed: the first request a served engine sends after the
    run's first checkpoint calls `stop()` (the real server process ends) before it goes out, once; `killed`
    records it. Mid-run by construction, however many requests a run's setup makes first."""
    return _server_killed_mid_run


@contextlib.contextmanager
def _server_killed_mid_run(run_dir, stop):
    from unittest import mock

    from rlprompt_math.checkpoint import STATE_LAST
    from rlprompt_math.engines.openai import OpenAIEngine

    killed, real_complete = [], OpenAIEngine._complete

    def complete(self, texts, **kwargs):
        if (run_dir / STATE_LAST).exists() and not killed:
            killed.append(True)
            stop()  # the request below meets a closed port
        return real_complete(self, texts, **kwargs)

    with mock.patch.object(OpenAIEngine, "_complete", complete):
        yield killed
