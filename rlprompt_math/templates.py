"""How a prompt and a question become the text an engine sees: the one home for rendering.

A prompt is more than words. `Prompt` holds an instruction (the words a policy writes, or a person's
sentence) and worked examples (`Exemplar`: a question and the answer written in some form). A plain
string is a prompt with an instruction only, so every caller that passes text keeps working.

Rendering, for the model's chat template (`template=None` or `"chat:..."`):

    user:      exemplar 1 question          (earlier turns: the model sees demonstrations
    assistant: exemplar 1 answer             as its own past answers)
    ...
    user:      question \\n instruction      (the content template; the prompt after the question)
    assistant: <generation starts here>

Without a chat template (`template` a raw string such as `"{question}\\n{prompt}"`), exemplars are
inlined before it as `Q: ...\\nA: ...` blocks. `Prompt.messages(question)` gives the same chat turns
as plain dicts, which is what a user pastes into any chat API.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

# How a prompt and a question are combined into the user message when no template is given.
# The prompt goes after the question (measured on the default model: bench/reports/2026-11-22-headline-slots-and-grid.md).
DEFAULT_CONTENT_TEMPLATE = "{question}\n{prompt}"
CHAT_PREFIX = "chat:"

__all__ = ["CHAT_PREFIX", "DEFAULT_CONTENT_TEMPLATE", "Exemplar", "Prompt", "PromptLike", "as_prompt", "chat_content_template",
           "render"]


@dataclass(frozen=True)
class Exemplar:
    """A worked example shown before the question: the assistant's `answer` is already in its answer form."""

    question: str
    answer: str


@dataclass(frozen=True)
class Prompt:
    """Instruction words plus worked examples (hashable: prompts key caches, counters and reports)."""

    instruction: str = ""
    exemplars: tuple[Exemplar, ...] = ()

    def __str__(self) -> str:
        if not self.exemplars:
            return self.instruction
        shots = " | ".join(f"{e.question} -> {e.answer}" for e in self.exemplars)
        return f"[{len(self.exemplars)}-shot: {shots}] {self.instruction}".rstrip()

    def messages(self, question: str, content_template: str = DEFAULT_CONTENT_TEMPLATE) -> list[dict]:
        """The chat turns for `question`: exemplars as earlier user/assistant turns, then the question."""
        turns: list[dict] = []
        for exemplar in self.exemplars:
            turns += [{"role": "user", "content": exemplar.question},
                      {"role": "assistant", "content": exemplar.answer}]
        turns.append({"role": "user", "content": _content(content_template, self.instruction, question)})
        return turns

    def to_dict(self) -> dict:
        return {"instruction": self.instruction,
                "exemplars": [{"question": e.question, "answer": e.answer} for e in self.exemplars]}

    @classmethod
    def from_dict(cls, data: dict) -> "Prompt":
        return cls(data.get("instruction", ""),
                   tuple(Exemplar(e["question"], e["answer"]) for e in data.get("exemplars", ())))


PromptLike = Union[str, Prompt]


def as_prompt(prompt: PromptLike) -> Prompt:
    return prompt if isinstance(prompt, Prompt) else Prompt(str(prompt))


def chat_content_template(template: str | None) -> str:
    """The user turn's template of a run's `--template` (a chat one, or the default), for `Prompt.messages`."""
    return template[len(CHAT_PREFIX):] if template and template.startswith(CHAT_PREFIX) else DEFAULT_CONTENT_TEMPLATE


def _content(template: str, instruction: str, question: str) -> str:
    content = template.replace("{prompt}", instruction).replace("{question}", question)
    return content if instruction else content.strip()


def render(tokenizer, template: str | None, prompt: PromptLike, question: str, *, name: str = "the model") -> str:
    """The text the model sees for (prompt, question).

    * `template=None`: the model's chat template, exemplar turns, then one user message
      `question\\nprompt` (just `question` when the instruction is empty), then the assistant header.
    * `template="chat:{prompt} {question}"`: that content inside the chat template.
    * any other string, e.g. `"{question}\\n{prompt}"`: used as raw text, no chat template; exemplars
      are inlined before it.
    """
    prompt = as_prompt(prompt)
    use_chat = template is None or template.startswith(CHAT_PREFIX)
    if template is None:
        template = DEFAULT_CONTENT_TEMPLATE
    elif use_chat:
        template = template[len(CHAT_PREFIX):]
    if use_chat:
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError(f"{name} has no chat template; pass a template string such as '{{question}}\\n{{prompt}}'")
        return tokenizer.apply_chat_template(prompt.messages(question, template), tokenize=False,
                                             add_generation_prompt=True)
    shots = "".join(f"Q: {e.question}\nA: {e.answer}\n\n" for e in prompt.exemplars)
    return shots + _content(template, prompt.instruction, question)
