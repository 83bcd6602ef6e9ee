"""What every demo shares: its command line and where its figure goes.

A demo writes into its own run folder (runs/demos/NAME, or --out). The README's copy of its
figure in docs/images/ changes only when asked (--readme-figure), so running a demo never
rewrites the committed pictures. Every option shows its help and its default in --help.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

DOCS_IMAGES = Path(__file__).resolve().parent.parent / "docs" / "images"


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """The docstring as written, and '(default: X)' after each option's help, except where
    there is nothing to show (a flag that is off, an option that is unset)."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


def demo_parser(docstring: str, name: str) -> argparse.ArgumentParser:
    """A parser whose --help shows the demo's docstring, with --out (default runs/demos/NAME)
    and --readme-figure already added."""
    parser = argparse.ArgumentParser(prog=f"python demos/{name}.py", description=docstring,
                                     formatter_class=_HelpFormatter)
    parser.add_argument("--out", default=os.path.join("runs", "demos", name), metavar="DIR",
                        help="folder for the figure and anything else the demo writes")
    parser.add_argument("--readme-figure", action="store_true",
                        help=f"also refresh the README's figure, docs/images/{name}.png")
    return parser


def figure_paths(args: argparse.Namespace, name: str) -> list[str]:
    """Where to write the figure: args.out/NAME.png, and the README's copy with
    --readme-figure. The folders are created."""
    paths = [os.path.join(args.out, f"{name}.png")]
    if args.readme_figure:
        paths.append(str(DOCS_IMAGES / f"{name}.png"))
    for path in paths:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    return paths
