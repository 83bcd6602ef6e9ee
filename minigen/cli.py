"""The `minigen` command: train, sample, eval, inspect, demo.

Each subcommand is a function that adds its parser and a function that runs it; the work
itself lives in minigen.run. Training loops are found by name in LOOPS (imported only when
the command line is built) and in the MINIGEN_LOOPS environment variable. Bad input ends with
one line on stderr and exit code 2, never a traceback.
"""
from __future__ import annotations

import argparse
import ast
import importlib
import inspect
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np

import minigen
from minigen import __version__, backend, editing, viz
from minigen.checkpoint import CheckpointError, inspect_checkpoint, summarize_checkpoint
from minigen.run import (EVAL_SAMPLES, POINT_EVAL_SAMPLES, TrainingInterrupted, UserError, add_common_arguments,
                         draw_samples, load_run_data, load_trained, quality_measures,
                         read_checkpoint_config, sample_defaults, train, write_samples)
from minigen.run import MEASURE_SEED

# `minigen train NAME` -> the TrainingLoop subclass, as "module:Class".
LOOPS = {"ddpm": "minigen.ddpm:DDPMLoop", "gan": "minigen.gan:GANLoop"}
LOOPS_ENV = "MINIGEN_LOOPS"  # more loops: "name=module:Class,name2=module2:Class2"
EXIT_USER_ERROR = 2
NOT_OPTIONS = ("command", "loop", "handler", "argv")  # namespace entries that are no options
DEMOS_DIR = Path(__file__).resolve().parent.parent / "demos"  # in the source repository


# ---------------------------------------------------------------------------------------
# The registry of loops
# ---------------------------------------------------------------------------------------
def registered_loops() -> dict[str, str]:
    """name -> "module:Class": LOOPS and the ones MINIGEN_LOOPS adds."""
    loops = dict(LOOPS)
    for entry in filter(None, (part.strip() for part in os.environ.get(LOOPS_ENV, "").split(","))):
        name, _, spec = entry.partition("=")
        if not name or ":" not in spec:
            raise UserError(f"{LOOPS_ENV} entry {entry!r} is not NAME=module:Class (for example "
                            "mine=my_package.loop:MyLoop)")
        loops[name.strip()] = spec.strip()
    return loops


def loop_class(name: str):
    """Import and return the loop class registered as `name`."""
    loops = registered_loops()
    if name not in loops:
        raise UserError(f"no training loop named {name!r}; known: {', '.join(sorted(loops))}")
    module_name, _, class_name = loops[name].partition(":")
    try:
        return getattr(importlib.import_module(module_name), class_name)
    except Exception as error:  # a loop that cannot load must not break the other commands
        raise UserError(f"the {name} loop ({loops[name]}) cannot be loaded: "
                        f"{type(error).__name__}: {error}") from None


# ---------------------------------------------------------------------------------------
# Parsers: defaults shown in --help, one-line errors
# ---------------------------------------------------------------------------------------
class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows '(default: X)' except where there is nothing to show (None, False)."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line (a UserError) and that knows its
    subcommand parsers (`children`), so the options a user typed can be told from defaults."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        kwargs.setdefault("allow_abbrev", False)  # --sample must not silently mean --sample-every
        super().__init__(*args, **kwargs)
        self.children: list[Parser] = []

    def add_command(self, subparsers, name: str, handler, **kwargs) -> "Parser":
        child = subparsers.add_parser(name, **kwargs)
        child.set_defaults(handler=handler)
        self.children.append(child)
        return child

    def walk(self):
        yield self
        for child in self.children:
            yield from child.walk()

    def error(self, message: str):
        raise UserError(f"{message} (see '{self.prog} --help')")


def _summary(docstring: str | None) -> str:
    """The first sentence of a docstring, on one line: up to the first ". " that is outside
    parentheses (so "(Ho et al. 2020)" stays whole)."""
    paragraph = " ".join(inspect.cleandoc(docstring or "").split("\n\n")[0].split())
    depth = 0
    for index, char in enumerate(paragraph):
        depth += (char == "(") - (char == ")")
        if char == "." and depth == 0 and paragraph[index + 1:index + 2] in (" ", ""):
            return paragraph[:index]
    return paragraph.rstrip(".")


# ---------------------------------------------------------------------------------------
# minigen train LOOP
# ---------------------------------------------------------------------------------------
def train_parser(root: Parser, subparsers) -> None:
    parser = root.add_command(
        subparsers, "train", None, help="train a model; writes checkpoint.h5, samples.png, "
        "loss.png, metrics.json, config.json and log.csv into --out",
        description="Train a model. `minigen train ddpm` with no options is the main job: DDPM "
                    "on the embedded 8x8 digits.",
        epilog=f"More loops can be registered with {LOOPS_ENV}=name=module:Class.")
    loops = parser.add_subparsers(dest="loop", metavar="LOOP", required=True)
    for name in registered_loops():
        try:
            loop_cls = loop_class(name)
        except UserError as error:
            parser.add_command(loops, name, _unavailable(error), help=f"(unavailable: {error})",
                               description=str(error))
            continue
        child = parser.add_command(loops, name, train_command, help=_summary(loop_cls.__doc__),
                                   description=inspect.cleandoc(loop_cls.__doc__ or ""))
        add_common_arguments(child.add_argument_group("run options (every loop has them)"),
                             loop_cls)
        loop_cls.add_arguments(child)


def _unavailable(error: UserError):
    """The handler of a loop that cannot load: whatever options follow, say why."""
    def handler(args) -> int:
        raise error
    handler.takes_any_arguments = True
    return handler


def _options(args) -> dict:
    return {key: value for key, value in vars(args).items() if key not in NOT_OPTIONS}


def given_options(argv: list[str], args) -> set[str]:
    """The options that `argv` sets, told apart from defaults by parsing it again with every
    default replaced by a marker."""
    not_given = object()
    root = build_parser()
    markers = {key: not_given for key in _options(args)}
    for parser in root.walk():
        parser.set_defaults(**markers)
    again = root.parse_args(argv)
    return {key for key in markers if getattr(again, key, not_given) is not not_given}


def train_command(args) -> int:
    given = given_options(args.argv, args)
    train(loop_class(args.loop), _options(args), explicit=given)
    return 0


# ---------------------------------------------------------------------------------------
# minigen sample / eval: a trained loop rebuilt from its checkpoint
# ---------------------------------------------------------------------------------------
class SharedOptionGroup:
    """An argument group that skips an option an earlier loop has added: loops may share a
    sampling option (DDPM and GAN checkpoints both take --class), and argparse refuses a flag
    twice. The option is listed under the first loop that has it."""

    def __init__(self, group, taken: set):
        self.group, self.taken = group, taken

    def add_argument(self, *flags, **kwargs):
        if self.taken & set(flags):
            shared = f"also takes {flags[0]} (listed above)"
            self.group.description = "; ".join(filter(None, [self.group.description, shared]))
            return None
        self.taken.update(flags)
        return self.group.add_argument(*flags, **kwargs)

    def __getattr__(self, name):
        return getattr(self.group, name)


def add_sampling_arguments(parser: Parser, n_default: int, n_help: str, seed_default: int = 0,
                           seed_help: str = "seeds the sampling noise") -> None:
    parser.add_argument("checkpoint", metavar="CKPT", help="a checkpoint.h5 written by train")
    parser.add_argument("--n", type=int, default=n_default, help=n_help)
    parser.add_argument("--seed", type=int, default=seed_default, help=seed_help)
    parser.add_argument("--device", choices=backend.DEVICES, default="cpu",
                        help="where to sample")
    taken: set[str] = set()
    for name in registered_loops():
        try:
            loop_cls = loop_class(name)
        except UserError:
            continue  # `train` reports why; sampling a checkpoint of that loop will too
        group = parser.add_argument_group(f"options of {name} checkpoints")
        loop_cls.add_sample_arguments(SharedOptionGroup(group, taken))


def _other_loops_sample_options(name: str) -> set[str]:
    options = set()
    for other in registered_loops():
        if other != name:
            try:
                options |= set(sample_defaults(loop_class(other)))
            except UserError:
                pass
    return options


def trained_loop(args):
    """(loop, config, step, sample options) for a command on a checkpoint whose parser has
    add_sampling_arguments (sample, eval): the loop rebuilt and its weights loaded. An option
    of another loop's sampler is refused rather than ignored."""
    config, _ = read_checkpoint_config(args.checkpoint)
    name = config.get("loop")
    if not name:
        raise UserError(f"{args.checkpoint} records no training loop in its config; pass a "
                        "checkpoint written by `minigen train`")
    loop_cls = loop_class(name)
    own = sample_defaults(loop_cls)
    others = _other_loops_sample_options(name) - set(own)
    foreign = sorted(given_options(args.argv, args) & others)
    if foreign:
        raise UserError(f"--{foreign[0].replace('_', '-')} is not an option of the {name} loop "
                        f"that {args.checkpoint} holds (see '{args.command} --help')")
    if args.n is not None and args.n < 1:
        raise UserError(f"--n is {args.n}; pass the number of samples to draw, 1 or more")
    loop, config, step = load_trained(args.checkpoint, loop_cls, args.device)
    return loop, config, step, {key: getattr(args, key) for key in own}


def _draw(loop, n: int, options: dict, seed: int):
    try:
        return draw_samples(loop, n, options, seed)
    except ValueError as error:  # a bad sampler option, reported by the loop
        raise UserError(f"{loop.config['loop']} sampling: {error}") from None


def sample_parser(root: Parser, subparsers) -> None:
    parser = root.add_command(subparsers, "sample", sample_command,
                              help="draw samples from a trained model into a .png or .npy file",
                              description="Draw samples from a checkpoint. .png: an image grid, "
                                          "or points scattered over the data; .npy: the raw "
                                          "array (images in [-1, 1] NCHW, points (N, D)).")
    add_sampling_arguments(parser, 64, "number of samples")
    parser.add_argument("--out", default="samples.png", metavar="FILE",
                        help="where to write: .png or .npy")


def sample_command(args) -> int:
    if not args.out.endswith((".png", ".npy")):
        raise UserError(f"--out {args.out}: pass a file name ending in .png (a picture) or .npy "
                        "(the raw array)")
    loop, config, _, options = trained_loop(args)
    if options.get("trajectory"):
        Path(options["trajectory"]).parent.mkdir(parents=True, exist_ok=True)
    samples = _draw(loop, args.n, options, args.seed)
    dataset = None
    if config.get("data_kind") == "points" and args.out.endswith(".png"):
        try:  # the data drawn under the samples; the picture is still useful without it
            dataset = load_run_data(config)
        except UserError:
            dataset = None
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    write_samples(samples, args.out, dataset)
    print(f"wrote {len(samples)} samples {tuple(samples.shape[1:])} to {args.out}", file=sys.stderr)
    if options.get("trajectory"):
        print(f"wrote the denoising trajectory to {options['trajectory']} (rows: samples; "
              "columns: timesteps from pure noise, left, to the sample, right)", file=sys.stderr)
    return 0


def eval_parser(root: Parser, subparsers) -> None:
    parser = root.add_command(subparsers, "eval", eval_command,
                              help="measure sample quality; prints one JSON object",
                              description="Measure the quality of a checkpoint's samples against "
                                          "the held-out data (feature FID with its real-vs-real "
                                          "floor on images, mode coverage on mixtures). With "
                                          "--class C: the share of samples read as C, and FID "
                                          "against the held-out images of class C. The JSON "
                                          "records the seed and sampler options used.")
    add_sampling_arguments(parser, None, f"number of samples to measure (default: {EVAL_SAMPLES} "
                                         f"for images, {POINT_EVAL_SAMPLES} for points)",
                           MEASURE_SEED, "seeds the sampling noise; the default is the seed of "
                                         "the measures in train's metrics.json, so the two agree")
    parser.add_argument("--data-dir", default=None, metavar="DIR",
                        help="folder with the dataset's files (default: the one used in training)")


def eval_command(args) -> int:
    loop, config, step, options = trained_loop(args)
    if args.data_dir is not None:
        config = dict(config, data_dir=args.data_dir)
    dataset = load_run_data(config)
    try:
        measures = quality_measures(loop, dataset, args.n, options, args.seed)
    except ValueError as error:
        raise UserError(f"{config['loop']} sampling: {error}") from None
    result = {"checkpoint": args.checkpoint, "loop": config["loop"],
              "dataset": config["dataset"], "step": step, **measures}
    print(json.dumps(result, default=float))
    return 0


# ---------------------------------------------------------------------------------------
# minigen inpaint / img2img: editing an image with a trained DDPM (minigen.editing)
# ---------------------------------------------------------------------------------------
def _add_editing_arguments(parser: Parser) -> None:
    parser.add_argument("checkpoint", metavar="CKPT",
                        help="a checkpoint of `minigen train ddpm` (--conditional for --class)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--image", metavar="PNG",
                        help="the picture to edit (made grey or RGB and resized to the model's)")
    source.add_argument("--index", type=int, metavar="I",
                        help="edit image I of the held-out split of the checkpoint's dataset")
    parser.add_argument("--class", dest="class_label", type=int, default=None, metavar="C",
                        help="make the result class C (a model trained with --conditional)")
    parser.add_argument("--guidance", type=float, default=None, metavar="W",
                        help="classifier-free guidance scale with --class (default: 3)")
    parser.add_argument("--n", type=int, default=4, help="edited versions to draw")
    parser.add_argument("--sampling-steps", type=int, default=50,
                        help="denoising steps over the whole range 0..T")
    parser.add_argument("--seed", type=int, default=0, help="seeds the noise")
    parser.add_argument("--device", choices=backend.DEVICES, default="cpu",
                        help="where to run")
    parser.add_argument("--out", required=True, metavar="FILE",
                        help=".png: a strip (the input, then the edits); .npy: the edits as an "
                             "array (N, C, H, W) in [-1, 1]")


def _editing_input(args):
    """(loop, image (C, H, W) in [-1, 1]) for an inpaint / img2img command line."""
    if not args.out.endswith((".png", ".npy")):
        raise UserError(f"--out {args.out}: pass a file name ending in .png or .npy")
    if args.n < 1:
        raise UserError(f"--n is {args.n}; pass the number of edits to draw, 1 or more")
    config, _ = read_checkpoint_config(args.checkpoint)
    if config.get("loop") != "ddpm" or config.get("data_kind") != "images":
        raise UserError(f"{args.checkpoint} holds a {config.get('loop')} model of "
                        f"{config.get('data_kind')}; {args.command} needs a DDPM of images "
                        "(minigen train ddpm)")
    loop, config, _ = load_trained(args.checkpoint, loop_class("ddpm"), args.device)
    if args.image is not None:
        try:
            return loop, editing.read_image(args.image, config["data_shape"])
        except ValueError as error:
            raise UserError(str(error)) from None
    test = load_run_data(config).test
    if not 0 <= args.index < len(test):
        raise UserError(f"--index {args.index}: the held-out split of {config['dataset']} has "
                        f"{len(test)} images; pass 0 to {len(test) - 1}")
    return loop, backend.to_numpy(test[args.index])


def _edit(args, loop, image, edit):
    """edit(denoiser, images) on n copies of image, seeded, with the loop's guided denoiser."""
    images = minigen.Tensor(backend.to_device(np.repeat(image[None], args.n, axis=0),
                                              loop.device))
    minigen.manual_seed(args.seed)
    try:
        with loop.guided(args.class_label, args.guidance) as denoiser:
            return backend.to_numpy(edit(denoiser, images).data)
    except ValueError as error:
        raise UserError(f"{args.command}: {error}") from None


def _write_edits(path: str, shown_first: list, edits) -> None:
    if path.endswith(".npy"):
        viz.save_array(edits, path)
    else:
        viz.save_strip(np.concatenate([np.stack(shown_first), edits]), path)
    print(f"wrote {len(edits)} edits to {path}", file=sys.stderr)


def inpaint_parser(root: Parser, subparsers) -> None:
    parser = root.add_command(
        subparsers, "inpaint", inpaint_command, help="regenerate part of an image (RePaint)",
        description="Regenerate the masked part of an image so that it fits the rest (RePaint: "
                    "the kept pixels are re-noised to each step's level, with jumps back up to "
                    "harmonise). With --class the new part makes the image that class.")
    _add_editing_arguments(parser)
    parser.add_argument("--mask", required=True, metavar="REGION|PNG",
                        help=f"the part to regenerate: {', '.join(editing.MASKS)}, or a PNG "
                             "whose white pixels are regenerated")
    parser.add_argument("--jump-length", type=int, default=5,
                        help="RePaint: steps of each jump back up")
    parser.add_argument("--resamplings", type=int, default=5,
                        help="RePaint: times each stretch is walked down")


def inpaint_command(args) -> int:
    loop, image = _editing_input(args)
    try:
        hidden = editing.read_mask(args.mask, *image.shape[1:])
    except ValueError as error:
        raise UserError(str(error)) from None
    edits = _edit(args, loop, image, lambda denoiser, images: editing.inpaint(
        denoiser, loop.schedule, images, 1 - hidden, steps=args.sampling_steps,
        jump_length=args.jump_length, resamplings=args.resamplings, prediction=loop.prediction))
    _write_edits(args.out, [image, np.where(hidden == 1, 0.0, image)], edits)
    return 0


def img2img_parser(root: Parser, subparsers) -> None:
    parser = root.add_command(
        subparsers, "img2img", img2img_command, help="redraw an image from a noised copy (SDEdit)",
        description="Noise an image to step strength * T and denoise it (SDEdit): low strength "
                    "keeps the image, high strength keeps only its rough shape. With --class "
                    "the result leans toward that class.")
    _add_editing_arguments(parser)
    parser.add_argument("--strength", type=float, default=0.6,
                        help="how much noise: 0 keeps the image, 1 starts from pure noise")


def img2img_command(args) -> int:
    loop, image = _editing_input(args)
    edits = _edit(args, loop, image, lambda denoiser, images: editing.img2img(
        denoiser, loop.schedule, images, args.strength, steps=args.sampling_steps,
        prediction=loop.prediction))
    _write_edits(args.out, [image], edits)
    return 0


# ---------------------------------------------------------------------------------------
# minigen inspect / demo
# ---------------------------------------------------------------------------------------
def inspect_parser(root: Parser, subparsers) -> None:
    parser = root.add_command(subparsers, "inspect", inspect_command,
                              help="say what a checkpoint holds",
                              description="Summarise a checkpoint: format, step, each model with "
                                          "its parameter count, the optimizers and EMAs with "
                                          "their sizes, and the config. --full lists every "
                                          "array with its dtype, shape and size.")
    parser.add_argument("checkpoint", metavar="CKPT", help="a .h5 file")
    parser.add_argument("--full", action="store_true",
                        help="list every group and array (any HDF5 file)")


def _parameter_counts(path: str) -> dict:
    """Model name -> number of parameters, from the loop rebuilt out of the checkpoint's
    config (the file alone cannot tell parameters from buffers); empty when it cannot be."""
    try:
        config, _ = read_checkpoint_config(path)
        loop = load_trained(path, loop_class(config["loop"]))[0]
    except (UserError, KeyError):
        return {}
    return {name: sum(int(np.prod(param.shape)) for param in model.parameters())
            for name, model in loop.models().items()}


def inspect_command(args) -> int:
    try:
        if args.full:
            print(inspect_checkpoint(args.checkpoint))
        else:
            print(summarize_checkpoint(args.checkpoint, _parameter_counts(args.checkpoint)))
    except CheckpointError as error:
        raise UserError(str(error)) from None
    return 0


def available_demos() -> list[str]:
    return sorted(path.stem for path in DEMOS_DIR.glob("*.py") if not path.name.startswith("_"))


def describe_demo(name: str) -> tuple[str, str]:
    """(what the demo shows, how long it takes) from demos/NAME.py, read without running it:
    the first sentence of its docstring and its RUNTIME string ("" where it has none)."""
    try:
        tree = ast.parse((DEMOS_DIR / f"{name}.py").read_text(encoding="utf-8"))
    except (OSError, SyntaxError, ValueError):
        return "", ""
    runtime = ""
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(target, "id", None) == "RUNTIME"
                                                for target in node.targets):
            if isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
                runtime = node.value.value
    return _summary(ast.get_docstring(tree)), runtime


def demo_listing(demos: list[str]) -> str:
    """Per demo: its name and how long it takes, then what it shows, indented."""
    lines = []
    for name in demos:
        summary, runtime = describe_demo(name)
        lines.append(f"{name} ({runtime})" if runtime else name)
        lines.extend(textwrap.wrap(summary, 96, initial_indent="    ", subsequent_indent="    "))
    lines.append("Times: default settings on an idle 2-core CPU. Run one with `minigen demo NAME`;")
    lines.append("`minigen demo NAME --help` lists its options.")
    return "\n".join(lines)


def demo_parser(root: Parser, subparsers) -> None:
    parser = root.add_command(subparsers, "demo", demo_command,
                              help="run one of the demos (demos/NAME.py); without NAME, list "
                                   "them with what each shows and how long it takes",
                              description=f"Run demos/NAME.py from the source repository "
                                          f"({DEMOS_DIR}); arguments after NAME go to the demo.")
    parser.add_argument("name", metavar="NAME", nargs="?", help="the demo to run")
    parser.add_argument("demo_args", metavar="ARGS", nargs=argparse.REMAINDER,
                        help="arguments for the demo (see minigen demo NAME --help)")


def demo_command(args) -> int:
    if not DEMOS_DIR.is_dir():
        raise UserError(f"the demos folder is not there ({DEMOS_DIR}); the demos come with the "
                        "source repository: clone it and install minigen from it with pip -e")
    demos = available_demos()
    if args.name is None:
        print(demo_listing(demos) if demos else f"(no demos in {DEMOS_DIR})")
        return 0
    if args.name not in demos:
        raise UserError(f"no demo named {args.name!r}; available: {', '.join(demos) or 'none'}")
    return subprocess.call([sys.executable, str(DEMOS_DIR / f"{args.name}.py"), *args.demo_args])


# ---------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------
# Each subcommand: the function that adds its parser. More are added here.
COMMANDS = [train_parser, sample_parser, inpaint_parser, img2img_parser, eval_parser,
            inspect_parser, demo_parser]


def build_parser() -> Parser:
    root = Parser(prog="minigen", description="minigen: GANs and DDPM from scratch on "
                                              "NumPy / CuPy. Run a subcommand with --help for "
                                              "its options.")
    root.add_argument("--version", action="version", version=f"minigen {__version__}")
    subparsers = root.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add_parser in COMMANDS:
        add_parser(root, subparsers)
    return root


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit code (0, 2 for bad input, 128 + N on signal N)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        parser = build_parser()
        try:
            args, unknown = parser.parse_known_args(argv)
        except SystemExit as done:  # --help and --version
            return int(done.code or 0) if not isinstance(done.code, str) else EXIT_USER_ERROR
        if unknown and not getattr(args.handler, "takes_any_arguments", False):
            parser.error(f"unrecognized arguments: {' '.join(unknown)}")
        args.argv = argv
        return args.handler(args)
    except UserError as error:
        if not error.quiet:  # a data-parallel run reports once, from rank 0
            print(f"minigen: error: {error}", file=sys.stderr)
        return EXIT_USER_ERROR
    except TrainingInterrupted as interrupted:
        if not getattr(interrupted, "quiet", False):
            print(f"minigen: {interrupted}", file=sys.stderr)
        return interrupted.exit_code
    except KeyboardInterrupt:
        print("minigen: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `minigen inspect CKPT | head`: the reader left, nothing to say
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so that Python's exit flush does not fail again
        return 141  # 128 + SIGPIPE, as a shell reports it


if __name__ == "__main__":
    sys.exit(main())
