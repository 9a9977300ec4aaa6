"""Command line (provisional): answers a few built-in questions with the frozen default model."""

import click


@click.command()
@click.option("--model", default=None, help="Hub id, local directory or .gguf file (default: embedded SmolLM2).")
@click.option("--agent", default="reinforce", help="Agent to run (training arrives with issue 5).")
def main(model, agent):
    from rlprompt_math.llm import FrozenLLM

    llm = FrozenLLM.load(model)
    questions = ["What is 2+3?", "What is 36+32?", "What is 7*8?"]
    texts = [llm.render("Answer with only the final number.", q) for q in questions]
    for q, a in zip(questions, llm.generate(texts, max_new_tokens=32)):
        click.echo(f"{q} -> {a}")
