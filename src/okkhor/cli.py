"""The `okkhor` command line: one thin command per verb; the work happens in the library."""
from __future__ import annotations

import functools
import importlib
import inspect

import typer

from okkhor.errors import Interrupted, OkkhorError

app = typer.Typer(
    name="okkhor",
    help="Train and ship handwritten-grapheme recognisers (Bengali.AI format).\n\n"
         "Data path: synth | import | Kaggle files -> prepare -> split -> train -> predict / evaluate / score "
         "-> report.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

# verb -> module under okkhor.commands defining `command`
VERBS = {
    "synth": "synth",
    "import": "import_",
    "prepare": "prepare",
    "split": "split",
    "train": "train",
    "cv": "cv",
    "configs": "configs",
    "predict": "predict",
    "evaluate": "evaluate",
    "score": "score",
    "report": "report",
    "export": "export",
    "serve": "serve",
    "average": "average",
    "preview": "preview",
    "memory": "memory",
    "info": "info",
    "fonts": "fonts",
    "stylize": "stylize",
}


def fail(message: str, code: int = 2) -> "typer.Exit":
    """Print one error line to stderr and return the Exit to raise."""
    typer.echo(f"okkhor: error: {message}", err=True)
    return typer.Exit(code)


def _guarded(func):
    """Turn OkkhorError (and Ctrl-C) into one line on stderr and a non-zero exit, never a traceback."""
    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except Interrupted as exc:  # not an error: the line says how to go on (empty on the other processes)
            if str(exc):
                typer.echo(str(exc), err=True)
            raise typer.Exit(exc.exit_code) from None
        except OkkhorError as exc:
            raise fail(str(exc)) from None
        except KeyboardInterrupt:
            raise fail("interrupted", 130) from None
    return wrapper


def reflow(doc: str | None) -> str | None:
    """A docstring for `--help`: each run of prose lines on one line, so that the terminal's width wraps it (never a
    break inside a sentence); indented lines (examples, listings) stay verbatim, each on its own line."""
    if not doc:
        return doc
    out = []
    for paragraph in inspect.cleandoc(doc).split("\n\n"):
        lines: list[str] = []
        for line in paragraph.splitlines():
            if line[:1].isspace() or not lines or lines[-1][:1].isspace():
                lines.append(line)
            else:
                lines[-1] += " " + line.strip()
        out.append("\n".join(lines))
    return "\n\n".join(out)


def _register() -> None:
    for verb, module in VERBS.items():
        mod = importlib.import_module(f"okkhor.commands.{module}")
        command = _guarded(mod.command)
        command.__doc__ = reflow(mod.command.__doc__)
        app.command(name=verb)(command)


_register()


def main() -> None:
    app(prog_name="okkhor")


if __name__ == "__main__":
    main()
