"""The served engine (`--engine openai`).

Two kinds of server, both real processes or threads listening on 127.0.0.1:
  * small HTTP servers written here, for what a healthy server never does (a 503, a malformed body,
    a vLLM-style echo with known numbers);
  * llama.cpp's `llama-server`, built from PyPI sources (`rlprompt_math.servers.llama_cpp`) and serving the
    embedded default model re-exported as F16: agreement with the local engine, training through it,
    the likelihood reward's error, and a server killed in the middle of a run.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from rlprompt_math.engines import EngineCapabilityError, EngineError
from rlprompt_math.grading import answer_is_complete
from rlprompt_math.engines.openai import OpenAIEngine, cut_at_answer


# ---- small servers for what llama-server never does ---------------------------------------------


class StubServer:
    """A real HTTP server on 127.0.0.1 whose answers the test scripts: `reply(path, body) -> (status, text)`."""

    def __init__(self, reply):
        self.requests: list[tuple[str, dict | None]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self, body):
                outer.requests.append((self.path, body))
                status, text = reply(self.path, body)
                data = text.encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                self._answer(None)

            def do_POST(self):
                length = int(self.headers.get("Content-Length", 0))
                self._answer(json.loads(self.rfile.read(length)))

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def completions_reply(text_for=lambda prompt: f"echo {len(prompt)}", count_tokens=None):
    """A well-formed /completions answer: one choice per prompt, in the order given; usage reports 3
    completion tokens a prompt, and prompt tokens when `count_tokens(prompt)` is given."""
    def reply(path, body):
        if path.endswith("/models"):
            return 200, json.dumps({"object": "list", "data": [{"id": "stub-model"}]})
        prompts = body["prompt"]
        choices = [{"index": i, "text": text_for(p), "finish_reason": "length"} for i, p in enumerate(prompts)]
        usage = {"completion_tokens": 3 * len(prompts)}
        if count_tokens:
            usage["prompt_tokens"] = sum(count_tokens(p) for p in prompts)
        return 200, json.dumps({"choices": choices, "usage": usage})
    return reply


@pytest.fixture
def stub(request):
    servers = []

    def start(reply):
        server = StubServer(reply)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()


def served(tiny_engine, *urls, **kwargs) -> OpenAIEngine:
    kwargs = {"max_retries": 2, "backoff_s": 0.01, "timeout": 5, **kwargs}
    return OpenAIEngine(list(urls), local=tiny_engine, **kwargs)


def test_model_name_comes_from_the_server_when_only_one_is_served(stub, tiny_engine):
    server = stub(completions_reply())
    engine = served(tiny_engine, server.base_url)
    assert engine.name == engine.served_model == "stub-model"
    assert engine.fingerprint()["tokenizer_hash"] == tiny_engine.tokenizer_hash


def test_batches_go_out_as_prompt_lists_and_come_back_in_order(stub, tiny_engine):
    count = lambda text: len(tiny_engine.encode([text])[0])  # noqa: E731  (the server's tokenizer is ours)
    server = stub(completions_reply(count_tokens=count))
    engine = served(tiny_engine, server.base_url, served_model="m", prompts_per_request=3)
    texts = [tiny_engine.render(f"p{i}", "What is 1+1?") for i in range(7)]
    out = engine.generate(texts, max_new_tokens=5)
    assert out == [f"echo {len(t)}" for t in texts]
    posts = [body for path, body in server.requests if path.endswith("/completions")]
    assert sorted(len(b["prompt"]) for b in posts) == [1, 3, 3]
    assert all(b["model"] == "m" and b["max_tokens"] == 5 and b["temperature"] == 0.0 for b in posts)
    # Usage is accounted; a repeated greedy call is answered from the cache, with no request.
    assert engine.stats.new_tokens == 21 and engine.stats.requests == 3
    assert engine.stats.prompt_tokens == sum(count(t) for t in texts)
    assert engine.generate(texts, max_new_tokens=5) == out
    assert engine.stats.requests == 3 and engine.stats.cache_hits == 7


def test_replicas_share_the_requests(stub, tiny_engine):
    first, second = stub(completions_reply()), stub(completions_reply())
    engine = served(tiny_engine, first.base_url, second.base_url, served_model="m", prompts_per_request=1)
    engine.generate([f"text {i}" for i in range(8)], max_new_tokens=2)
    assert len(first.requests) == len(second.requests) == 4


def test_a_5xx_is_retried_and_then_answered(stub, tiny_engine):
    calls = {"n": 0}
    healthy = completions_reply()

    def flaky(path, body):
        calls["n"] += 1
        return (503, "busy") if calls["n"] <= 2 else healthy(path, body)

    engine = served(tiny_engine, stub(flaky).base_url, served_model="m")
    assert engine.generate(["a"], max_new_tokens=2) == ["echo 1"]
    assert engine.stats.retries == 2 and engine.stats.requests == 3


def test_a_dead_server_gives_a_clear_error_after_the_retries(tiny_engine):
    from rlprompt_math.servers.process import free_port

    url = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    engine = served(tiny_engine, url, served_model="m", max_retries=2)
    with pytest.raises(EngineError, match=r"did not answer POST /completions .* after 3 attempts") as error:
        engine.generate(["What is 2+2?"], max_new_tokens=2)
    assert url in str(error.value) and "--resume" in str(error.value)
    assert engine.stats.requests == 3 and engine.stats.retries == 2


@pytest.mark.parametrize("status, text, message", [
    (200, "not json at all", "not JSON"),
    (200, json.dumps({"choices": [{"index": 0}]}), "malformed response"),
    (200, json.dumps({"choices": []}), "expected 1 choices"),
    (200, json.dumps({"error": "overloaded"}), "malformed response"),
    (400, json.dumps({"error": "prompt too long"}), "refused POST /completions .*HTTP 400.*prompt too long"),
])
def test_a_bad_answer_is_an_error_at_once(stub, tiny_engine, status, text, message):
    server = stub(lambda path, body: (status, text))
    engine = served(tiny_engine, server.base_url, served_model="m")
    with pytest.raises(EngineError, match=message):
        engine.generate(["What is 2+2?"], max_new_tokens=2)
    assert len(server.requests) == 1  # not retried: asking again would get the same


def test_answer_logprobs_read_the_echoed_prompt_logprobs(stub, tiny_engine):
    """A vLLM-style echo: the answer's tokens are those that reach past the text (numbers chosen here)."""
    def echo(path, body):
        choices = []
        for i, prompt in enumerate(body["prompt"]):
            assert body["echo"] is True and body["logprobs"] >= 0
            tokens = [prompt[:-3], prompt[-3:-1], prompt[-1:], "!"]  # the last is the generated token
            offsets = [0, len(prompt) - 3, len(prompt) - 1, len(prompt)]
            choices.append({"index": i, "text": prompt + "!", "logprobs": {
                "tokens": tokens, "text_offset": offsets, "token_logprobs": [None, -1.0, -0.5, -9.0]}})
        return 200, json.dumps({"choices": choices})

    engine = served(tiny_engine, stub(echo).base_url, served_model="m")
    # "Q: 1+1=42" comes back as "Q: 1+1" "=4" "2" (+ the generated "!"): a token that straddles the
    # text's end ("=4") counts for the answer, the generated one does not.
    assert engine.answer_logprobs(["Q: 1+1="], ["42"]) == [-1.5]  # "=4" reaches into "42", "2" is in it
    assert engine.answer_logprobs(["Q: 1+1=4"], ["2"], reduction="mean") == [-0.5]


def test_a_server_that_ignores_echo_is_detected(stub, tiny_engine):
    engine = served(tiny_engine, stub(completions_reply(lambda p: " 2")).base_url, served_model="m")
    with pytest.raises(EngineCapabilityError, match="ignored `echo`.*--reward correct"):
        engine.answer_logprobs(["Q: 1+1="], ["2"])


def test_both_routes_to_an_env_refuse_a_likelihood_reward_without_prompt_logprobs(stub, tiny_engine):
    """gym.make and a training run build the env through one constructor, which asks a served engine for
    prompt log-probs before the first step when a reward reads them; a reward that does not builds."""
    import gymnasium as gym

    import rlprompt_math.envs  # noqa: F401  (registers the environments)
    from rlprompt_math import train as training
    from rlprompt_math.config import RunConfig
    from rlprompt_math.data import generate_problems

    server = stub(completions_reply(lambda p: " 2"))
    engine = served(tiny_engine, server.base_url, served_model="m")
    problems = generate_problems(6, seed=0, kinds=["arithmetic"])
    with pytest.raises(EngineCapabilityError, match="ignored `echo`.*--reward correct"):
        gym.make("rlprompt_math/PromptRefine-v0", engine=engine, dataset=problems, split=None)
    with pytest.raises(EngineCapabilityError, match="ignored `echo`.*--reward correct"):
        training.build_env(RunConfig(), engine, problems)  # the default reward: answer_likelihood
    asked = len(server.requests)
    env = gym.make("rlprompt_math/PromptRefine-v0", engine=engine, dataset=problems, split=None, rewards=["correct"])
    assert env.unwrapped.engine is engine and len(server.requests) == asked  # nothing asked


def test_the_answer_cut_matches_the_local_stop_rule():
    assert cut_at_answer("36 + 32 = 68\n\nMore text\n", answer_is_complete) == "36 + 32 = 68\n\n"
    text = "Let me add.\nSo the answer is 68.\nWhy? Because\n"
    assert cut_at_answer(text, answer_is_complete) == "Let me add.\nSo the answer is 68.\n"
    assert cut_at_answer("no answer here", answer_is_complete) == "no answer here"


def test_gradient_agents_and_missing_urls_are_config_errors(stub, tiny_engine):
    from rlprompt_math.agents import check_config
    from rlprompt_math.config import ConfigError, RunConfig

    with pytest.raises(ConfigError, match="needs --base-url"):
        check_config(RunConfig.from_flat({"engine": "openai"}))
    with pytest.raises(ConfigError, match="--engine transformers"):
        check_config(RunConfig.from_flat({"engine": "openai", "base_url": ["http://x/v1"], "agent": "pez"}))
    with pytest.raises(EngineCapabilityError, match="--engine transformers"):
        served(tiny_engine, stub(completions_reply()).base_url).prompt_loss(None, ["q"], ["1"])


# ---- llama.cpp's llama-server -----------------------------------------------------------------


# These serve the real default model (and build llama-server on first use): integration tests.
llama = pytest.mark.slow


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory):
    """llama-server serving the embedded default (F16 re-export) on 127.0.0.1, built on first use."""
    from rlprompt_math.servers import llama_cpp

    llama_cpp.build()
    log = tmp_path_factory.mktemp("llama-server") / "server.log"
    with llama_cpp.serve(slots=8, log_path=log) as server:
        yield server


@llama
def test_llama_server_answers_as_the_local_engine(llama_server, default_engine):
    """Greedy answers through the server agree with the in-process engine on at least 95% of 64 pairs."""
    from rlprompt_math.config import REFERENCE_PROMPTS
    from rlprompt_math.data import generate_problems
    from rlprompt_math.grading import grade
    from rlprompt_math.oracle import Decoding, score_pairs
    from rlprompt_math.rewards import RewardMix

    problems = generate_problems(16, seed=3, kinds=["arithmetic"], difficulty=2)
    pairs = [(prompt, p) for p in problems for prompt in REFERENCE_PROMPTS]
    engine = OpenAIEngine([llama_server.base_url], local=default_engine, served_model="smollm2")
    mix = RewardMix(["correct"])
    prompts, probs = [p for p, _ in pairs], [q for _, q in pairs]
    _, remote = score_pairs(engine, mix, probs, prompts, Decoding(32))
    _, local = score_pairs(default_engine, mix, probs, prompts, Decoding(32))
    same_answer = [grade(r["completion"], str(l["extracted"])).correct if l["extracted"] is not None
                   else r["extracted"] is None for r, l in zip(remote, local)]
    assert len(pairs) == 64
    assert sum(same_answer) >= 0.95 * 64, [(r["completion"], l["completion"]) for r, l, s in
                                            zip(remote, local, same_answer) if not s]
    assert engine.stats.requests >= 4 and engine.stats.new_tokens > 0


@llama
def test_training_through_llama_server(llama_server, tmp_path):
    """Two REINFORCE steps through the server from the command line; every engine flag reaches the engine."""
    from click.testing import CliRunner

    from rlprompt_math import train as training
    from rlprompt_math.cli import main

    captured = {}
    real_build = training.build

    def spy(config, **kwargs):
        built = real_build(config, **kwargs)
        captured["engine"] = built.engine
        return built

    args = ["train", "--engine", "openai", "--base-url", llama_server.base_url, "--served-model", "smollm2",
            "--request-timeout", "60", "--max-retries", "3", "--concurrency", "2", "--prompts-per-request", "4",
            "--reward", "correct", "--steps", "2", "--batch-size", "2", "--prompts-per-question", "2",
            "--num-problems", "60", "--val-size", "4", "--test-size", "4", "--eval-every", "2",
            "--output-dir", str(tmp_path), "--name", "served", "--quiet"]
    import unittest.mock

    with unittest.mock.patch.object(training, "build", spy):
        result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    engine = captured["engine"]
    assert isinstance(engine, OpenAIEngine) and engine.base_urls == [llama_server.base_url]
    assert (engine.served_model, engine.timeout, engine.max_retries, engine.concurrency,
            engine.prompts_per_request) == ("smollm2", 60.0, 3, 2, 4)
    assert engine.stats.requests > 0 and engine.stats.generated_rows > 0
    from rlprompt_math.checkpoint import FINAL_EVAL, SUMMARY

    summary = json.loads((tmp_path / "served" / SUMMARY).read_text())
    assert summary["steps"] == 2
    assert (tmp_path / "served" / FINAL_EVAL / "report.json").is_file()


@llama
def test_a_likelihood_reward_against_llama_server_fails_before_training(llama_server, tmp_path):
    from click.testing import CliRunner

    from rlprompt_math.cli import main

    args = ["train", "--engine", "openai", "--base-url", llama_server.base_url, "--steps", "2",
            "--num-problems", "60", "--output-dir", str(tmp_path), "--name", "likelihood", "--quiet"]
    result = CliRunner().invoke(main, args)  # the default reward is answer_likelihood
    assert result.exit_code != 0
    assert "ignored `echo`" in result.output and "--reward correct" in result.output
    assert "Traceback" not in result.output


@llama
def test_a_server_killed_mid_run_stops_with_a_clear_error_and_resume_continues(llama_server, tmp_path,
                                                                               server_killed_mid_run):
    from rlprompt_math.checkpoint import STATE_LAST, load_state
    from rlprompt_math.config import RunConfig
    from rlprompt_math.train import resume_config, train

    settings = {"engine": "openai", "base_url": [llama_server.base_url], "served_model": "smollm2",
                "max_retries": 2, "request_timeout": 30, "rewards": ["correct"], "steps": 4, "batch_size": 2,
                "prompts_per_question": 2, "checkpoint_every": 1, "eval_every": 4, "num_problems": 60,
                "val_size": 4, "test_size": 4, "no_final_eval": True, "output_dir": str(tmp_path),
                "name": "killed", "quiet": True,
                "shots": 0}  # instruction prompts, as before exemplars became the default: this is about the server
    run = tmp_path / "killed"
    with server_killed_mid_run(run, llama_server.stop) as killed:
        with pytest.raises(EngineError, match="did not answer .* after 3 attempts.*--resume"):
            train(RunConfig.from_flat(settings), log=lambda *_: None)
    assert killed
    saved_step = load_state(run / STATE_LAST)[1]["step"]
    assert 1 <= saved_step < 4
    llama_server.start()
    result = train(resume_config(run, quiet=True), log=lambda *_: None)
    assert result.summary["steps"] == 4
