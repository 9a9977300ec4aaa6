"""The settings: one dataclass per concern, a docstring per field (as CleanRL's `Args`, TRL's `GRPOConfig`).

This is the only place a default or a list of choices is written. The `train` command's options, the
keys of a `--config` YAML file and the `config.yaml` of a run directory are all derived from these
fields (`cli_fields`): a field named `max_new_tokens` is the option `--max-new-tokens` and the YAML key
`max_new_tokens`. Field names are unique across the sections, so a run's settings are one flat mapping.

    from rlprompt_math.config import RunConfig
    config = RunConfig.from_flat({"agent": "random", "steps": 20})
    config.algorithm.steps  # 20
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import math
import numbers
import re
import textwrap
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterator

if TYPE_CHECKING:
    from .templates import PromptLike

DEFAULT_SHOTS = 2  # exemplar slots when --shots is not given and the agent can choose exemplars (Agent.default_shots)
SOFT_INITS = ("text", "random")
LOSS_TARGETS = ("gold", "own")
POLICY_KINDS = ("unconditioned", "refiner", "autoregressive")
BASELINES = ("none", "moving_average", "batch_mean", "rloo", "learned")
ENTROPY_SCHEDULES = ("constant", "linear", "cosine")
OPTIMIZERS = ("adam", "sgd")
DATA_FORMATS = ("auto", "gsm8k", "openmath", "math", "fields")
ENGINES = ("transformers", "openai")
GENERATOR_KINDS = ("arithmetic", "order_of_operations", "fractions", "decimals", "percentages", "word_one_step",
                   "word_two_step", "linear_equation", "powers_roots", "remainders", "absolute_values", "factorials",
                   "gcd_lcm")  # the built-in generator's problem kinds (data.GENERATORS)
ANSWER_FORMS = ("bare", "equation", "spaced", "completion")  # how an exemplar's answer is written (exemplars.py)
ENGINE_CACHE_SIZE = 50_000  # greedy completions an engine keeps, least recently used dropped first

# The hand-written reference prompts that every comparison includes (training's final comparison,
# `run.py evaluate`), the empty prompt first. "" is shown as NO_PROMPT.
# "Give the answer as a single number." is the strongest of those measured on the default model
# (issue 12), so a learned prompt is always compared with it.
REFERENCE_PROMPTS = ("", "Let's think step by step.", "Answer with only the final number.",
                     "Give the answer as a single number.")
NO_PROMPT = "(no prompt)"


class ConfigError(ValueError):
    """A setting out of range or inconsistent with another; the message names it."""


DTYPES = ("auto", "float32", "bfloat16", "float16", "fp32", "bf16", "fp16")  # --dtype (engines' resolve_dtype)

# The range of each numeric setting, whatever the agent: name -> ((operator, bound), ...). RunConfig.validate
# checks them (and that every float is finite) before anything loads; a value outside names its flag.
RANGES = {
    "steps": ((">=", 1),), "batch_size": ((">=", 1),), "prompts_per_question": ((">=", 1),),
    "checkpoint_every": ((">=", 1),), "eval_every": ((">=", 0),), "num_problems": ((">=", 1),),
    "val_size": ((">=", 1),), "test_size": ((">=", 0),), "max_new_tokens": ((">=", 1),),
    "prompt_length": ((">=", 1),), "policy_width": ((">=", 1),), "exemplar_pool": ((">=", 0),),
    "sample_top_k": ((">=", 0),), "finalists": ((">=", 0),), "reference_shots": ((">=", 0),),
    "target_questions": ((">=", 1),), "shots": ((">=", 0),), "max_retries": ((">=", 0),),
    "concurrency": ((">=", 1),), "prompts_per_request": ((">=", 1),), "request_timeout": ((">", 0),),
    "lr": ((">=", 0),), "network_lr": ((">=", 0),), "value_lr": ((">=", 0),), "grad_lr": ((">", 0),),
    "gumbel_lr": ((">", 0),), "gumbel_tau": ((">", 0),), "gumbel_tau_end": ((">", 0),),
    "moving_average_decay": ((">=", 0), ("<=", 1)), "max_grad_norm": ((">", 0),),
    "sample_temperature": ((">", 0),), "entropy_coef": ((">=", 0),), "pointer_scale": ((">=", 0),),
    "clusters": ((">=", 0),), "max_oracle_pairs": ((">=", 0),), "update_epochs": ((">=", 1),),
    "clip_ratio": ((">", 0),), "halving_steps": ((">=", 0),),
}
RANGE_HINTS = {"eval_every": "0: validate only at the end", "lr": "0: a frozen policy",
               "shots": "0: instruction words only", "reference_shots": "0: no few-shot reference",
               "finalists": "0: off", "sample_top_k": "0: all", "clusters": "0: one per kind",
               "max_oracle_pairs": "0: no cap", "halving_steps": "0: off"}


def _in_range(value, bounds) -> bool:
    return all(value >= bound if op == ">=" else value > bound if op == ">" else value <= bound
               for op, bound in bounds)


def _describe(bounds) -> str:
    return " and ".join(f"{op} {bound}" for op, bound in bounds)


def flag_of(name: str) -> str:
    """The command-line flag of the setting `name` (`max_new_tokens` -> `--max-new-tokens`, `rewards` -> `--reward`)."""
    f = _fields_by_name().get(name)
    return f.metadata["flag"] if f is not None and "flag" in f.metadata else "--" + name.replace("_", "-")


def _field_kind(f: dataclasses.Field):
    """int, float, bool, tuple or None (text, or no type to check) for a setting's field."""
    default = f.default
    if "type" in f.metadata:
        return f.metadata["type"]
    for kind in (bool, int, float, tuple):
        if isinstance(default, kind):
            return kind
    return None


def check_setting_types(settings: dict, *, source: str = "") -> None:
    """Refuse a setting whose value is not of its field's type: `steps: 1.7` is not an integer (it would be cut
    to 1), `quiet: 2` not a boolean; an int is a float's value. `source` (a file) prefixes the message."""
    for name, value in settings.items():
        f = _fields_by_name().get(name)
        if f is None or value is None:
            continue
        kind, where = _field_kind(f), f"{source}: " if source else ""
        expected = {bool: "true or false", int: "an integer", float: "a number"}.get(kind)
        if kind is bool and not isinstance(value, bool):
            raise ConfigError(f"{where}{name}: {value!r} is not {expected} ({flag_of(name)})")
        if kind is int and (isinstance(value, bool) or not isinstance(value, numbers.Integral)):
            raise ConfigError(f"{where}{name}: {value!r} is not {expected} ({flag_of(name)})")
        if kind is float and (isinstance(value, bool) or not isinstance(value, numbers.Real)):
            raise ConfigError(f"{where}{name}: {value!r} is not {expected} ({flag_of(name)})")
        if kind is tuple and not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}{name}: {value!r} is not a list ({flag_of(name)} takes several values)")


def read_settings(path, *, what: str = "settings file") -> dict:
    """The settings in a YAML file (a `--config` file, a run's config.yaml) as a mapping: a file that is not
    YAML, or holds something else than `key: value` lines, raises ConfigError naming the file and line."""
    import yaml

    path = str(path)
    try:
        with open(path, encoding="utf-8") as handle:
            settings = yaml.safe_load(handle)
    except UnicodeDecodeError as error:
        raise ConfigError(f"{path}: {what} is not UTF-8 text ({error.reason} at byte {error.start})") from None
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        line = f":{mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}{line}: {what} is not valid YAML ({error.problem or error.context})") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: {what} is not valid YAML ({' '.join(str(error).split())})") from None
    if settings is None:
        return {}
    if not isinstance(settings, dict):
        raise ConfigError(f"{path}: {what} holds {type(settings).__name__} {str(settings)[:40]!r}, not settings "
                          "(write one `name: value` per line, e.g. `steps: 20`)")
    return settings


def prompt_label(prompt: "PromptLike") -> str:
    """How a prompt is named in reports: its text (a structured `templates.Prompt`: its label, exemplars
    then instruction), or NO_PROMPT for the empty one."""
    return str(prompt) or NO_PROMPT


def opt(default: Any = None, **cli) -> Any:
    """A field whose command-line option needs more than its name, type and default.

    cli keys: flag (option name), choices, multiple, metavar, path ("dir" or "file"), type (where the default
    None does not say it), cli=False (not an option: set by the wiring), listed (the values a comma-separated
    setting takes, added to its help).
    """
    if isinstance(default, list):
        raise TypeError("use a tuple for a sequence default")
    return field(default=default, metadata=cli)


@dataclass
class DataConfig:
    """Where the problems come from and how they are split (the split and generator use RunConfig.seed)."""

    dataset: str = opt("generator", metavar="PATH_OR_ID")
    """'generator' (built-in, offline), a .jsonl/.csv/.parquet file, or a hub dataset id."""
    fmt: str = opt("auto", flag="--format", choices=DATA_FORMATS)
    """Dataset format (auto: detected from the columns)."""
    question_field: str | None = None
    """Column holding the question (format 'fields')."""
    answer_field: str | None = None
    """Column holding the answer (format 'fields')."""
    kind_field: str | None = None
    """Column holding each problem's kind (per-kind tables in evaluations; exemplar pools get every kind). A
    column named 'kind' is read without it; the generator names its own kinds."""
    hub_split: str = "train"
    """Split to read from a hub dataset."""
    skip_bad_rows: bool = False
    """Skip malformed rows (reported) instead of stopping."""
    kinds: str = opt("arithmetic", listed=GENERATOR_KINDS)
    """Generator problem kinds, comma-separated, or 'all'."""
    difficulty: str = "1,2"
    """Generator difficulty levels (1-3), comma-separated."""
    num_problems: int = 2000
    """Generated problems (before the split)."""


@dataclass
class EngineConfig:
    """The frozen LLM and the engine that computes it (`engines.load_engine`)."""

    engine: str = opt("transformers", choices=ENGINES)
    """transformers: the model in this process (CPU or CUDA). openai: an OpenAI-compatible completions
    server (vLLM, SGLang, TGI, llama.cpp's llama-server) at --base-url; --model is then the local copy
    that supplies the tokenizer, the chat template and the question features (README: Scaling out)."""
    model: str | None = opt(None, metavar="NAME_OR_PATH")
    """Frozen LLM: hub id, local directory or .gguf file. Default: the embedded SmolLM2-135M-Instruct."""
    dtype: str = "auto"
    """auto (bf16 on a GPU that has it; on a CPU bf16 only where a decode-shaped product measures faster
    than fp32) | float32 | bfloat16 | float16."""
    device: str = "auto"
    """auto | cpu | cuda | cuda:N."""
    load_in_8bit: bool = False
    """Load the LLM in 8-bit with bitsandbytes (CUDA only)."""
    template: str | None = None
    """Prompt template, e.g. '{prompt} {question}' (raw) or 'chat:{prompt} {question}'. Default: chat
    template, question then prompt."""
    base_url: tuple[str, ...] = opt((), multiple=True, metavar="URL")
    """--engine openai: the server's base URL, e.g. http://127.0.0.1:8000/v1; repeat it for replicas
    (requests are spread over them), or give one router URL."""
    served_model: str | None = None
    """--engine openai: the model name the server knows (default: the only one its /models lists)."""
    request_timeout: float = 120.0
    """--engine openai: seconds to wait for one response."""
    max_retries: int = 5
    """--engine openai: retries of a request after a connection error or a 5xx, with backoff."""
    concurrency: int = 8
    """--engine openai: requests in flight per base URL."""
    prompts_per_request: int = 16
    """--engine openai: prompts sent in one request (the `prompt` list)."""

    def validate(self):
        if self.engine not in ENGINES:
            raise ConfigError(f"engine must be one of {ENGINES}")
        if self.dtype not in DTYPES:
            raise ConfigError(f"--dtype must be one of {', '.join(DTYPES)} (got {self.dtype!r})")
        if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", str(self.device)):
            raise ConfigError(f"--device must be auto, cpu, mps, cuda or cuda:N (got {self.device!r})")
        if self.engine == "openai" and not self.base_url:
            raise ConfigError("--engine openai needs --base-url (the server's URL, e.g. http://127.0.0.1:8000/v1)")
        if self.engine != "openai" and self.base_url:
            raise ConfigError("--base-url is for --engine openai")
        if self.request_timeout <= 0 or self.max_retries < 0 or self.concurrency < 1 or self.prompts_per_request < 1:
            raise ConfigError("--request-timeout must be > 0, --max-retries >= 0, --concurrency and "
                              "--prompts-per-request >= 1")


@dataclass
class OracleConfig:
    """How the frozen LLM answers and how an answer is scored."""

    rewards: tuple[str, ...] = opt(("answer_likelihood",), flag="--reward", multiple=True, metavar="SPEC")
    """Reward function, repeatable: correct, correct_strict, partial, format, likelihood, answer_likelihood,
    module:fn or file.py:fn, with an optional weight as the last field (partial:0.5). The default,
    answer_likelihood (the gold answer's probability where the model states its own), ranks prompts by
    held-out accuracy better than correct (bench/learning_signal.py)."""
    max_new_tokens: int = 32
    """Oracle answer length limit."""
    stop_at_answer: bool = True
    """End an answer at the first line break after it states a final answer (saves forward passes)."""


@dataclass
class PolicyConfig:
    """What the agent writes: the action vocabulary, the prompt length and the policy network."""

    policy: str = opt("unconditioned", choices=POLICY_KINDS)
    """unconditioned: one prompt for all questions; refiner: question-conditioned MLP with tied logits;
    autoregressive: GRU, token by token."""
    prompt_length: int = 8
    """Prompt tokens the policy writes (the env's action has this many slots)."""
    action_vocab: str = "words"
    """words | words:PATH | frequent:N | tokens:PATH | full."""
    empty_action: bool = True
    """Include a 'no token' action, so prompts can be shorter than --prompt-length."""
    policy_width: int = 256
    """Width of the refiner policies' hidden layer (the MLP's, the GRU's state): the policy's own size, not
    the frozen LLM's hidden size."""
    fixed_prompt: str = "Answer with only the final number."
    """The prompt of --agent fixed."""
    shots: int | None = opt(None, type=int)
    """Exemplar slots: each picks a training problem from the pool, or none (--agent reinforce and random;
    0: instruction words only). Default: 2 where the agent and policy can choose exemplars (reinforce or
    random with the unconditioned or refiner policy), else 0."""
    exemplar_pool: int = 32
    """Training problems the exemplar slots choose from (drawn from the training split only; where problems
    name their kind, an equal share of each kind)."""
    exemplar_pointer: bool = True
    """Refiner: score each exemplar slot's pool problems by their similarity to the question in the LLM's
    feature space (a pointer head), so an untrained refiner shows the nearest pool problems."""
    pointer_scale: float = 10.0
    """Refiner's pointer head: the starting weight of the similarity (cosine, -1 to 1) in an exemplar slot's
    logits, in nats (learned from there)."""
    answer_forms: tuple[str, ...] = opt(ANSWER_FORMS, flag="--answer-form", multiple=True, choices=ANSWER_FORMS)
    """How exemplar answers may be written (the policy chooses one per prompt): bare (the gold answer), equation
    (`36+32 = 68`), spaced (the model's own form, `36 + 32 = 68`), completion (the model's own correct
    completion; costs one oracle pair per pool problem, once). Repeat the option to give several."""


@dataclass
class AlgorithmConfig:
    """The algorithm: REINFORCE's hyperparameters; random search uses the budget fields and `finalists`, the
    differentiable routes the step, batch, clipping and cadence fields (RunConfig.algorithm)."""

    steps: int = 30
    """Training steps (optimizer steps; random search: rounds of candidates)."""
    batch_size: int = 8
    """Questions per step."""
    prompts_per_question: int = 8
    """K prompts sampled per question (RLOO needs K >= 2)."""
    lr: float = 1.0
    """Learning rate (of --optimizer) of the unconditioned policy, a table of logits: a step moves a logit by
    about lr nats."""
    network_lr: float = 0.01
    """Learning rate of the question-conditioned policies (refiner, autoregressive): their logits come from
    network weights, and the same Adam step on every weight moves a logit by hundreds of nats (at --lr 1 the
    refiner's entropy reached 0 within 6 steps and it wrote one prompt for every question)."""
    optimizer: str = opt("adam", choices=OPTIMIZERS)
    """Policy optimizer. sgd: each logit moves by lr x its summed advantage, so evidence adds up and
    noise averages out (a gradient bandit); adam rescales every logit's step to about lr, however
    little evidence it has seen. On simulated oracles (bench/synthetic_learning.py) sgd did no better."""
    baseline: str = opt("rloo", choices=BASELINES)
    """REINFORCE baseline."""
    moving_average_decay: float = 0.9
    """Decay of the moving-average baseline."""
    normalize_rewards: bool = False
    """Z-score rewards per question across its K prompts (shared prompts: before each prompt's mean over
    the questions, then the K means again, RLPrompt-style)."""
    entropy_coef: float = 0.01
    """Entropy bonus coefficient (at step 0)."""
    entropy_schedule: str = opt("linear", choices=ENTROPY_SCHEDULES)
    """How the entropy coefficient decays over training (linear, cosine: to 0 at the last step)."""
    max_grad_norm: float = 1.0
    """Gradient clipping norm."""
    update_epochs: int = 1
    """Policy updates per batch of oracle rewards (REINFORCE): the first is the REINFORCE step; each further one
    reuses the same samples with PPO's clipped probability ratio (--clip-ratio), since updates are free and
    oracle pairs are not. 1: plain REINFORCE."""
    clip_ratio: float = 0.2
    """PPO's clip on the ratio of the updated to the sampling policy's probability, for --update-epochs > 1."""
    halving_steps: int = 0
    """REINFORCE: the last N of --steps update no policy; they measure its greedy prompt and best sampled prompts by
    successive halving on new training questions (the same pairs a step), and the survivors are its --finalists,
    in place of the best-rewarded samples (each measured on one step's questions). 0: off."""
    sample_temperature: float = 1.0
    """Temperature of the policy's prompt sampling while training (log-probabilities are always taken at 1).
    Not the LLM's: it decodes greedily."""
    sample_top_k: int = 0
    """The policy samples among its top k tokens per slot (0: all)."""
    value_lr: float = 1e-3
    """Learning rate of the learned baseline."""
    eval_every: int = 10
    """Validate the greedy prompt every N steps (0: only at the end)."""
    checkpoint_every: int = 5
    """Save a resumable checkpoint every N steps."""
    finalists: int = 0
    """At the end, also validate the N best-rewarded sampled prompts and keep the best of them and the
    greedy prompt (unconditioned policies and random search; 0: off)."""
    clusters: int = 0
    """--agent cluster: k-means clusters of the training questions, each with its own random search (0: one per
    kind where the training problems name their kinds, the generator's or --kind-field's; else 4)."""
    max_oracle_pairs: int = 0
    """A hard cap on the oracle pairs a run spends, training and validation (exemplar pool completions included;
    the final comparison not): a run whose plan exceeds it is refused before the model loads, and an agent never
    sends a step, validation or finalist that would take the run past it (it stops, keeping the best so far;
    summary.json says `stopped`). 0: no cap."""
    seed: int = opt(0, cli=False)
    """Seeds question sampling and prompt sampling (set from RunConfig.seed by the wiring)."""

    def validate(self):
        if self.baseline not in BASELINES:
            raise ConfigError(f"baseline must be one of {BASELINES}")
        if self.entropy_schedule not in ENTROPY_SCHEDULES:
            raise ConfigError(f"entropy schedule must be one of {ENTROPY_SCHEDULES}")
        if self.baseline == "rloo" and self.prompts_per_question < 2:
            raise ConfigError("the rloo baseline needs --prompts-per-question >= 2")
        if self.normalize_rewards and self.prompts_per_question < 2:
            raise ConfigError("per-question normalisation needs --prompts-per-question >= 2")
        if self.finalists < 0:
            raise ConfigError("--finalists must be >= 0 (0: off)")
        if self.lr < 0 or self.network_lr < 0:  # 0 is allowed: a frozen policy
            raise ConfigError("--lr and --network-lr must be >= 0")
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"optimizer must be one of {OPTIMIZERS}")


@dataclass
class GradientConfig:
    """The differentiable routes (--agent soft-prompt, pez, gumbel): gradients of a target's
    teacher-forced likelihood through the frozen LLM into the prompt. They also use --steps,
    --batch-size (questions per step), --max-grad-norm, --eval-every and --checkpoint-every."""

    grad_lr: float = 0.01
    """Adam learning rate of the prompt embeddings (--agent soft-prompt and pez)."""
    gumbel_lr: float = 1e-3
    """Adam learning rate of the policy's parameters (--agent gumbel). Larger steps saturate the Refiner's
    softmax within a step or two (its logits sum over the hidden layer), after which no gradient flows."""
    soft_init: str = opt("text", choices=SOFT_INITS)
    """How soft-prompt and pez prompts start: text (the embeddings of --init-text, one slot per token)
    or random (--prompt-length random rows of the action vocabulary)."""
    init_text: str = "Let's think step by step."
    """The prompt whose token embeddings start soft-prompt and pez (--soft-init text)."""
    loss_target: str = opt("gold", choices=LOSS_TARGETS)
    """What the loss teacher-forces after the assistant header. gold: the gold answer alone. own: the
    model's own completion that reached the gold answer (greedy, under --init-text or a reference prompt),
    so the loss is taken where the model states its answer after its own working; collecting them costs
    oracle pairs (counted), and only questions with such a completion are trained on."""
    target_questions: int = 256
    """--loss-target own: training questions whose completions are collected before step 1."""
    gumbel_tau: float = 1.0
    """Gumbel-softmax temperature tau at step 0 (--agent gumbel)."""
    gumbel_tau_end: float = 0.1
    """Gumbel-softmax temperature tau at the last step (annealed geometrically from --gumbel-tau)."""

    def validate(self):
        if self.grad_lr <= 0 or self.gumbel_lr <= 0:
            raise ConfigError("--grad-lr and --gumbel-lr must be > 0")
        if self.soft_init not in SOFT_INITS:
            raise ConfigError(f"soft init must be one of {SOFT_INITS}")
        if self.loss_target not in LOSS_TARGETS:
            raise ConfigError(f"--loss-target must be one of {LOSS_TARGETS}")
        if self.target_questions < 1:
            raise ConfigError("--target-questions must be >= 1")
        if self.soft_init == "text" and not self.init_text.strip():
            raise ConfigError("--init-text is empty; give a prompt or use --soft-init random")
        if self.gumbel_tau <= 0 or self.gumbel_tau_end <= 0:
            raise ConfigError("--gumbel-tau and --gumbel-tau-end must be > 0")


@dataclass
class RunConfig:
    """One training run: which agent, the sections above, and where the run directory goes."""

    agent: str = "reinforce"
    """The learner (its name and rules live on its class: `rlprompt_math.agents.AGENTS`). reinforce: policy
    gradient; random: random search on the same oracle budget; fixed: a hand-written prompt (--fixed-prompt);
    soft-prompt: prompt embeddings trained by gradient (EmbedGrad); pez: a discrete prompt by projected
    gradients; gumbel: the policy (--policy unconditioned or refiner) trained by straight-through Gumbel-softmax;
    knn: each question shown its nearest pool problems, the form and words by random search, same oracle budget;
    cluster: k-means on question features (--clusters), random search per cluster, same oracle budget;
    halving: successive halving over random prompts, same oracle budget; tpe: Optuna's TPE over the prompt's
    factors, MIPROv2's schedule (minibatch trials, a full evaluation every --eval-every steps)."""
    seed: int = 0
    """Seeds problem sampling, prompt sampling and the split."""
    val_size: int = 100
    """Validation questions."""
    test_size: int = 200
    """Held-out test questions in the final comparison."""
    reference_shots: int = 2
    """Few-shot reference in the final comparison: the first K training problems with answers in the model's
    own form (0: none)."""
    output_dir: str = opt("runs", path="dir")
    """Parent directory of run directories."""
    name: str | None = None
    """Run directory name (default: agent-policy-seed-time)."""
    resume: str | None = opt(None, path="existing_dir", metavar="DIR")
    """Continue an interrupted run from its last checkpoint, with its saved settings."""
    no_final_eval: bool = False
    """Skip the held-out comparison at the end."""
    quiet: bool = False
    """No progress bars."""
    data: DataConfig = field(default_factory=DataConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    oracle: OracleConfig = field(default_factory=OracleConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    gradient: GradientConfig = field(default_factory=GradientConfig)

    SECTIONS = ("data", "engine", "oracle", "policy", "algorithm", "gradient")

    def __post_init__(self):
        self.algorithm.seed = self.seed

    def validate(self) -> "RunConfig":
        """The settings every agent shares, each in its range (ConfigError naming the flag). The agent's own rules
        and the default --shots are its class's: `rlprompt_math.agents.check_config` checks a run whole."""
        if self.policy.policy not in POLICY_KINDS:
            raise ConfigError(f"policy must be one of {POLICY_KINDS}")
        if self.policy.prompt_length < 1:
            raise ConfigError("--prompt-length must be >= 1")
        if self.algorithm.finalists < 0:
            raise ConfigError("--finalists must be >= 0 (0: off)")
        if self.reference_shots < 0:
            raise ConfigError("--reference-shots must be >= 0 (0: no few-shot reference)")
        self.engine.validate()
        self._validate_shots()
        self._validate_ranges()
        return self

    def _validate_ranges(self):
        """Every number in its range (RANGES) and finite, whatever the agent; the data settings' text parses."""
        flat = self.to_flat()
        check_setting_types(flat)
        for name, value in flat.items():
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"{flag_of(name)} must be a finite number (got {value})")
            if name in RANGES and value is not None and not _in_range(value, RANGES[name]):
                hint = f"; {RANGE_HINTS[name]}" if name in RANGE_HINTS else ""
                raise ConfigError(f"{flag_of(name)} must be {_describe(RANGES[name])} (got {value}{hint})")
        if self.test_size < 1 and not self.no_final_eval:
            raise ConfigError(f"--test-size must be >= 1 for the final comparison (got {self.test_size}); "
                              "or skip the comparison with --no-final-eval")
        levels = [x.strip() for x in str(self.data.difficulty).split(",")]
        if not levels or any(x not in ("1", "2", "3") for x in levels):
            raise ConfigError(f"--difficulty takes levels 1, 2 or 3, comma-separated (got {self.data.difficulty!r})")

    def _validate_shots(self):
        policy = self.policy
        if policy.shots is None:  # the agent's default, filled in by `agents.check_config`
            return
        if policy.shots < 0:
            raise ConfigError("--shots must be >= 0 (0: instruction words only)")
        if not policy.shots:
            return
        if policy.exemplar_pool < 1:
            raise ConfigError("--exemplar-pool must be >= 1 when --shots > 0")
        unknown = [f for f in policy.answer_forms if f not in ANSWER_FORMS]
        if not policy.answer_forms or unknown or len(set(policy.answer_forms)) != len(policy.answer_forms):
            raise ConfigError(f"--answer-form takes distinct values of {ANSWER_FORMS}, not {policy.answer_forms}")

    # ---- the flat view: CLI options, --config YAML keys, config.yaml ---------------------------

    def to_flat(self) -> dict:
        """Every setting under its option name (sequences as lists, for YAML)."""
        out = {}
        for f, owner in _walk(self):
            value = getattr(owner, f.name)
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return out

    @classmethod
    def from_flat(cls, settings: dict) -> "RunConfig":
        """A config from option names (missing ones take their default; unknown ones raise)."""
        unknown = set(settings) - set(flat_field_names())
        if unknown:
            raise ConfigError(f"unknown settings {sorted(unknown)}")
        check_setting_types(settings)
        sections = {}
        for name in cls.SECTIONS:
            section_cls = _section_type(name)
            sections[name] = section_cls(**{f.name: _coerce(f, settings[f.name]) for f in dataclasses.fields(section_cls)
                                            if f.name in settings and f.metadata.get("cli", True)})
        top = {f.name: _coerce(f, settings[f.name]) for f in dataclasses.fields(cls)
               if f.name in settings and f.name not in cls.SECTIONS}
        return cls(**top, **sections)


# Settings that run directories written before they existed ran with (read when resuming or evaluating).
LEGACY_DEFAULTS = {"stop_at_answer": False, "finalists": 0, "reference_shots": 0, "shots": 0,
                   "exemplar_pointer": False}
# Settings renamed since (so that "temperature" and "hidden size" mean only the LLM's): a key in an older run's
# config.yaml -> its name now.
LEGACY_NAMES = {"hidden_size": "policy_width", "temperature": "sample_temperature", "top_k": "sample_top_k",
                "gumbel_temperature": "gumbel_tau", "gumbel_temperature_end": "gumbel_tau_end"}


def saved_config(settings: dict) -> RunConfig:
    """The config of a run directory's `config.yaml` (older runs: LEGACY_NAMES for renamed keys,
    LEGACY_DEFAULTS for missing ones)."""
    current = {LEGACY_NAMES.get(key, key): value for key, value in settings.items()}
    return RunConfig.from_flat({**LEGACY_DEFAULTS, **current})


def _coerce(f: dataclasses.Field, value):
    return tuple(value) if isinstance(f.default, tuple) and value is not None else value


def _section_type(name: str) -> type:
    return {"data": DataConfig, "engine": EngineConfig, "oracle": OracleConfig, "policy": PolicyConfig,
            "algorithm": AlgorithmConfig, "gradient": GradientConfig}[name]


def _walk(config: RunConfig) -> Iterator[tuple[dataclasses.Field, Any]]:
    """(field, the object holding it) for every setting that is an option, run fields first."""
    for f in dataclasses.fields(RunConfig):
        if f.name not in RunConfig.SECTIONS:
            yield f, config
    for name in RunConfig.SECTIONS:
        section = getattr(config, name)
        for f in dataclasses.fields(section):
            if f.metadata.get("cli", True):
                yield f, section


def cli_fields() -> list[tuple[dataclasses.Field, str]]:
    """(field, its help text) for every option of `train`, in order: run, data, engine, oracle, policy,
    algorithm, gradient."""
    return [(f, field_doc(type(owner), f.name)) for f, owner in _walk(RunConfig())]


@functools.lru_cache(maxsize=None)
def _fields_by_name() -> dict[str, dataclasses.Field]:
    return {f.name: f for f, _ in _walk(RunConfig())}


@functools.lru_cache(maxsize=None)
def flat_field_names() -> tuple[str, ...]:
    return tuple(f.name for f, _ in _walk(RunConfig()))


def field_default(name: str):
    """The default of the setting `name` (for other commands' options that mean the same thing)."""
    for f, owner in _walk(RunConfig()):
        if f.name == name:
            return getattr(owner, name)
    raise KeyError(name)


@functools.lru_cache(maxsize=None)
def _docs(cls: type) -> dict[str, str]:
    """The attribute docstrings of a dataclass (the string literal under each field)."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body
    docs = {}
    for node, after in zip(body, body[1:]):
        if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and isinstance(after, ast.Expr)
                and isinstance(after.value, ast.Constant) and isinstance(after.value.value, str)):
            docs[node.target.id] = " ".join(after.value.value.split())
    return docs


def field_doc(cls: type, name: str) -> str:
    """A field's docstring, followed by the values it lists (`opt(listed=...)`) where it has them."""
    listed = next((f.metadata.get("listed") for f in dataclasses.fields(cls) if f.name == name), None)
    doc = _docs(cls).get(name, "")
    return f"{doc} One or more of: {', '.join(listed)}." if listed else doc
