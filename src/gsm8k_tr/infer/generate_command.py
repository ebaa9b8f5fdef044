"""`gsm8k-tr generate`: a model's formatted answers, with the extracted number highlighted."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape

from gsm8k_tr.config import Recipe
from gsm8k_tr.data.prompts import build_prompt
from gsm8k_tr.grading.answers import answer_block, extract_answer, shown
from gsm8k_tr.infer import generation


def render(text: str, answer_tag: str) -> str:
    """Rich markup for a completion: the answer block bold, the number it grades as in green.

    >>> render("<sebep>\\n2+2=4\\n</sebep>\\n<cevap>\\n4\\n</cevap>", "cevap").splitlines()[-1]
    '[bold]<cevap>4</cevap>[/bold] → [bold green]4[/bold green]'
    """
    number = shown(extract_answer(text, answer_tag))
    block = answer_block(text, answer_tag)
    body = escape(text.strip())
    if block is None:
        return body + "\n[bold red]no answer block[/bold red]"
    found = f"[bold green]{escape(number)}[/bold green]" if number is not None else "[bold red]no number[/bold red]"
    return f"{body}\n[bold]{escape(f'<{answer_tag}>{block.strip()}</{answer_tag}>')}[/bold] → {found}"


def main(model_spec: str, recipe: Recipe, questions: list[str], device: str | None = None) -> None:
    """Answer each question and print it (on `device`, else the recipe's or the detected one)."""
    from gsm8k_tr.infer.evaluate import load_for_inference

    model, tokenizer, _ = load_for_inference(model_spec, recipe, device)
    prompts = [build_prompt(q, recipe.prompt) for q in questions]
    outputs = generation.generate(model, tokenizer, prompts, recipe.eval.max_new_tokens, recipe.eval.batch_size,
                                  recipe.eval.temperature, 1, recipe.seed, decoding=recipe.decoding)
    console = Console()
    for question, (completion,) in zip(questions, outputs):
        console.rule(escape(question[:100]))
        console.print(render(completion.text, recipe.prompt.answer_tag))
        if completion.truncated:
            console.print(f"[yellow](cut at eval.max_new_tokens={recipe.eval.max_new_tokens})[/yellow]")
