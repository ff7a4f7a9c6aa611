"""What the data-row options (--prompt, --system, --template, --schema, --id-column,
--input-format) mean for a command: a RowTask, resolved once, or None for request lines."""

from __future__ import annotations

from pathlib import Path

import typer

from ..config import RowTask


def task_options(
    ctx: typer.Context,
    input: str,
    model: str,
    prompt: str | None,
    system: str | None,
    template: Path | None,
    schema: str | None,
    id_column: str | None,
    input_format: str | None,
) -> tuple[RowTask | None, str]:
    """The task and the model to use: a template file's model, unless --model was given."""
    if (prompt, system, template, schema, id_column, input_format) == (None,) * 6:
        return None, model  # request lines: what load_task says then, without importing it
    from ..files.template import load_task

    task, file_model = load_task(
        input,
        prompt=prompt,
        system=system,
        template=template,
        schema=schema,
        id_column=id_column,
        input_format=input_format,
    )
    source = ctx.get_parameter_source("model")
    # --model (or BURSTQ_MODEL) given by the user wins; the built-in default does not.
    if file_model and getattr(source, "name", None) in (None, "DEFAULT"):
        model = file_model
    return task, model
