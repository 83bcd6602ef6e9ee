"""One diffusion model, three uses: class-conditional samples, inpainting, image-to-image.

A DDPM on the 8x8 digits is trained with its labels, each dropped to a "null" class 10% of the
time, so the same network predicts the noise with and without the class (classifier-free
guidance, Ho and Salimans 2022). Then, as text-to-image, inpainting and image-to-image do with
words and photographs:
  1. guided sampling: eps = eps_uncond + w (eps_cond - eps_uncond); the minigen digits
     classifier reads the samples, per class, for w from 0 (ignore the class) up; the feature
     FID shows what the sharper classes cost in diversity;
  2. inpainting (RePaint, Lugmayr et al. 2022): keep part of a digit and regenerate the rest
     as another class ("keep the top half of a 3, ask for an 8"); it works when the kept part
     fits the asked class, as the table per region shows beside real digits of the asked class
     given the same kept part (how far the kept part alone decides the classifier's reading);
  3. image-to-image (SDEdit, Meng et al. 2022): noise a digit to strength * T and denoise it;
     the more noise, the less of the input's class survives.

    python demos/editing.py [--ckpt CONDITIONAL_DDPM.h5] [--steps 2000]
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

import minigen
from minigen import diffusion, editing, metrics, run, viz
from minigen.ddpm import DDPMLoop
from minigen.models.classifier import classify, load_classifier
from minigen.tensor import Tensor
from _demo import demo_parser, figure_paths

# What `minigen demo` lists: the time of a default run on an idle 2-core CPU.
RUNTIME = "5 to 10 min"

# The example: keep the top half of a 3, regenerate the bottom half as an 8. For
# contrast, the same with the right half kept, which a 3 shares with an 8.
INPAINT_SOURCE, INPAINT_TARGET, INPAINT_REGION, CONTRAST_REGION = 3, 8, "bottom", "left"


def trained_loop(args) -> DDPMLoop:
    """The conditional DDPM of --ckpt, or the one in OUT/model trained (or resumed) up to
    --steps: `minigen train ddpm --conditional` with a smaller U-Net, so the demo finishes in
    minutes on a CPU."""
    checkpoint = args.ckpt or os.path.join(args.out, "model", run.CHECKPOINT)
    if args.ckpt is None:
        done = run.read_checkpoint_config(checkpoint)[1] if os.path.exists(checkpoint) else 0
        if done < args.steps:
            print(f"training a conditional DDPM for {args.steps} steps into "
                  f"{os.path.dirname(checkpoint)} (pass --ckpt to reuse one)", file=sys.stderr)
            options = run.default_config(
                DDPMLoop, conditional=True, steps=args.steps, base_channels=args.base_channels,
                batch_size=64, out=os.path.dirname(checkpoint), eval_samples=0,
                checkpoint_every=max(args.steps // 4, 1), sample_every=0, seed=args.seed,
                resume=checkpoint if done else None)
            try:
                run.train(DDPMLoop, options)
            except (run.UserError, run.TrainingInterrupted) as error:
                sys.exit(f"editing demo: {error}")
    try:
        loop, config, step = run.load_trained(checkpoint, DDPMLoop)
    except run.UserError as error:
        sys.exit(f"editing demo: {error}")
    if not config.get("conditional"):
        sys.exit(f"{checkpoint} holds an unconditional model; pass a checkpoint of "
                 "`minigen train ddpm --conditional`")
    print(f"loaded {checkpoint} (step {step})", file=sys.stderr)
    return loop


def guided_samples(loop: DDPMLoop, labels: np.ndarray, guidance: float, steps: int) -> np.ndarray:
    """One DDIM sample per label (deterministic, eta = 0) with guidance scale `guidance`."""
    with loop.guided(labels, guidance) as denoiser:
        samples = diffusion.ddim_sample(denoiser, loop.schedule, (len(labels), *loop.data_shape),
                                        steps=steps, prediction=loop.prediction)
    return samples.numpy()


def guidance_table(loop, dataset, classifier, args) -> tuple[list, np.ndarray]:
    """Per w: the share of samples read as the asked class (mean and worst class) and the FID."""
    labels = np.repeat(np.arange(dataset.num_classes), args.per_class)
    rows, pictures = [], None
    for guidance in args.guidances:
        minigen.manual_seed(args.seed)  # the same starting noise for every w
        samples = guided_samples(loop, labels, guidance, args.sampling_steps)
        correct = classify(samples, dataset, classifier) == labels
        per_class = correct.reshape(dataset.num_classes, args.per_class).mean(axis=1)
        fid = metrics.feature_fid(samples, dataset.test, classifier)
        rows.append((guidance, correct.mean(), per_class.min(), int(per_class.argmin()), fid))
        if guidance == args.picture_guidance:
            pictures = samples.reshape(dataset.num_classes, args.per_class, *samples.shape[1:])
    return rows, pictures


def inpaint_batch(loop, images, hidden, labels, args) -> np.ndarray:
    """RePaint completions of images (N, C, H, W) where hidden (H, W) is 1, toward labels (N,)
    with the edit guidance, or unconditional when labels is None."""
    with loop.guided(labels, None if labels is None else args.edit_guidance) as denoiser:
        result = editing.inpaint(denoiser, loop.schedule, Tensor(images), 1 - hidden,
                                 steps=args.sampling_steps, jump_length=args.jump_length,
                                 resamplings=args.resamplings, prediction=loop.prediction)
    return result.numpy()


def img2img_batch(loop, images, strength, labels, args) -> np.ndarray:
    """SDEdit of images (N, C, H, W) at `strength`, toward labels (N,) or none (None)."""
    with loop.guided(labels, None if labels is None else args.edit_guidance) as denoiser:
        result = editing.img2img(denoiser, loop.schedule, Tensor(images), strength,
                                 steps=args.sampling_steps, prediction=loop.prediction)
    return result.numpy()


def other_classes(labels: np.ndarray, num_classes: int, seed: int) -> np.ndarray:
    """A random class different from each label."""
    shift = np.random.default_rng(seed).integers(1, num_classes, len(labels))
    return (labels + shift) % num_classes


def _opposite(region: str) -> str:
    """The half kept when `region` (a half) is regenerated."""
    return {"top": "bottom", "bottom": "top", "left": "right", "right": "left"}[region]


def real_with_kept_part(dataset, classifier, sources, hidden, targets) -> float:
    """The share of chimeras read as their target: each real held-out digit of the target
    class with its kept part (hidden == 0) replaced by that of the source. What the kept part
    alone does to the classifier's reading, when the hidden part is a real digit of the class."""
    read_as_target = []
    for source, target in zip(sources, targets):
        reals = dataset.test[dataset.test_labels == target]
        chimeras = np.where(hidden == 1, reals, source)
        read_as_target.append(classify(chimeras, dataset, classifier) == target)
    return float(np.mean(np.concatenate(read_as_target)))


def inpainting_example(loop, dataset, classifier, region, args) -> tuple[float, float]:
    """(completions read as INPAINT_TARGET, real ones with the source's kept part read so) for
    the `region` of every held-out INPAINT_SOURCE regenerated --example-repeats times."""
    sources = dataset.test[dataset.test_labels == INPAINT_SOURCE]
    hidden = editing.region_mask(region, *dataset.shape[1:])
    minigen.manual_seed(args.seed)
    completed = inpaint_batch(loop, np.repeat(sources, args.example_repeats, axis=0), hidden,
                              np.full(len(sources) * args.example_repeats, INPAINT_TARGET), args)
    as_target = float(np.mean(classify(completed, dataset, classifier) == INPAINT_TARGET))
    real = real_with_kept_part(dataset, classifier, sources, hidden,
                               np.full(len(sources), INPAINT_TARGET))
    return as_target, real


def inpainting_table(loop, dataset, classifier, images, labels, targets, args) -> float:
    """Print, per regenerated region, how often completions are read as another asked class
    (beside real digits of that class given the same kept part) and, with no class asked, as
    the original one; then the issue's example (the top half of every held-out 3 kept, the
    bottom regenerated as an 8), its contrast (the right half kept), and how far kept pixels
    moved. Returns the example's share."""
    print(f"\n2. inpainting ({len(images)} test digits; RePaint: {args.sampling_steps} steps, "
          f"jumps of {args.jump_length}, {args.resamplings} resamplings): share read as")
    asked = f"another class asked (w = {args.edit_guidance:g})"
    print(f"{'region regenerated':>18} | {asked:>27} | {'real digit of it, same kept part':>32}"
          f" | {'no class: the original':>22}")
    known_error = 0.0
    for region in editing.MASKS:
        hidden = editing.region_mask(region, *dataset.shape[1:])
        minigen.manual_seed(args.seed)
        completed = inpaint_batch(loop, images, hidden, targets, args)
        plain = inpaint_batch(loop, images, hidden, None, args)
        for result in (completed, plain):
            known_error = max(known_error, float(np.abs(result - images)[..., hidden == 0].max()))
        as_target = np.mean(classify(completed, dataset, classifier) == targets)
        real = real_with_kept_part(dataset, classifier, images, hidden, targets)
        as_source = np.mean(classify(plain, dataset, classifier) == labels)
        print(f"{region:>18} | {as_target:>27.1%} | {real:>32.1%} | {as_source:>22.1%}")
    count = np.sum(dataset.test_labels == INPAINT_SOURCE)
    shares = {}
    for region in (INPAINT_REGION, CONTRAST_REGION):
        shares[region], real = inpainting_example(loop, dataset, classifier, region, args)
        kept = _opposite(region)
        print(f"   {count} held-out {INPAINT_SOURCE}s x {args.example_repeats}, {kept} half "
              f"kept, {region} half regenerated as an {INPAINT_TARGET}: {shares[region]:.1%} "
              f"read as {INPAINT_TARGET} (real {INPAINT_TARGET}s given a {INPAINT_SOURCE}'s "
              f"{kept} half: {real:.1%})")
    print(f"   largest change of a kept pixel: {known_error:.2g}")
    return shares[INPAINT_REGION]


def img2img_table(loop, dataset, classifier, images, labels, targets, args) -> None:
    """Print, per strength, how often SDEdit keeps the input's class (no class asked) and how
    often it reaches another asked class."""
    print(f"\n3. image-to-image (SDEdit) on {len(images)} test digits")
    print(f"{'strength':>8} | {'no class: still the input class':>31} | "
          f"{'another class asked: read as it':>31}")
    for strength in args.strengths:
        minigen.manual_seed(args.seed)
        kept = np.mean(classify(img2img_batch(loop, images, strength, None, args),
                                dataset, classifier) == labels)
        minigen.manual_seed(args.seed)
        moved = np.mean(classify(img2img_batch(loop, images, strength, targets, args),
                                 dataset, classifier) == targets)
        print(f"{strength:>8g} | {kept:>31.1%} | {moved:>31.1%}")


def picture_rows(loop, dataset, inputs, targets, args) -> tuple[np.ndarray, np.ndarray]:
    """(inpainting rows: a 3, its kept (top) half, four completions as an 8;
    img2img rows: an input, then its edits toward targets at each strength)."""
    hidden = editing.region_mask(INPAINT_REGION, *dataset.shape[1:])
    threes = dataset.test[dataset.test_labels == INPAINT_SOURCE][:4]
    minigen.manual_seed(args.seed + 1)
    completions = inpaint_batch(loop, np.repeat(threes, 4, axis=0), hidden,
                                np.full(4 * len(threes), INPAINT_TARGET), args)
    masked = np.where(hidden == 1, 0.0, threes)  # the hidden half shown mid grey
    inpainting = np.concatenate([threes[:, None], masked[:, None],
                                 completions.reshape(len(threes), 4, *dataset.shape)], axis=1)
    strips = [inputs]
    for strength in args.strengths:
        minigen.manual_seed(args.seed)
        strips.append(img2img_batch(loop, inputs, strength, targets, args))
    return inpainting, np.stack(strips, axis=1)


def draw_figure(path, samples, inpainting, img2img_rows, targets, args) -> None:
    """The three panels side by side: guided samples, inpainting, image-to-image."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    columns = min(args.picture_columns, samples.shape[1])
    panels = [
        (viz.make_grid(samples[:, :columns].reshape(-1, *samples.shape[2:]), nrow=columns,
                       scale=4),
         f"class-conditional samples, w = {args.picture_guidance:g}\n(row c: class c)"),
        (viz.make_grid(inpainting.reshape(-1, *inpainting.shape[2:]), nrow=inpainting.shape[1],
                       scale=4),
         f"inpainting: keep the {_opposite(INPAINT_REGION)} half of a {INPAINT_SOURCE}, ask "
         f"for an {INPAINT_TARGET}\n(input, kept part, 4 completions)"),
        (viz.make_grid(img2img_rows.reshape(-1, *img2img_rows.shape[2:]),
                       nrow=img2img_rows.shape[1], scale=4),
         f"image-to-image toward classes {', '.join(map(str, targets))} (by row)\n"
         "(input, then strength " + ", ".join(f"{s:g}" for s in args.strengths) + ")"),
    ]
    figure = Figure(figsize=(15, 7), dpi=100)
    FigureCanvasAgg(figure)
    for index, (picture, title) in enumerate(panels):
        axes = figure.add_subplot(1, 3, index + 1)
        axes.imshow(picture, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
        axes.set_title(title, fontsize=10)
        axes.axis("off")
    figure.tight_layout()
    figure.savefig(path)


def build_parser() -> argparse.ArgumentParser:
    parser = demo_parser(__doc__, "editing")
    parser.add_argument("--ckpt", default=None,
                        help="a checkpoint of `minigen train ddpm --conditional` (default: "
                             "train one into OUT/model, or reuse the one there)")
    parser.add_argument("--steps", type=int, default=2000, help="training steps when training")
    parser.add_argument("--base-channels", type=int, default=16,
                        help="U-Net width when training")
    parser.add_argument("--guidances", type=float, nargs="+", default=[0, 0.5, 1, 2, 3, 5],
                        help="guidance scales w of the first table")
    parser.add_argument("--per-class", type=int, default=30, help="samples per class and w")
    parser.add_argument("--edit-count", type=int, default=100,
                        help="test digits edited for the inpainting and img2img tables")
    parser.add_argument("--strengths", type=float, nargs="+", default=[0.2, 0.4, 0.6, 0.8, 1.0],
                        help="SDEdit strengths of the image-to-image table")
    parser.add_argument("--sampling-steps", type=int, default=25,
                        help="DDIM steps over the whole range 0..T")
    parser.add_argument("--jump-length", type=int, default=5, help="RePaint jump length")
    parser.add_argument("--resamplings", type=int, default=3, help="RePaint resamplings")
    parser.add_argument("--example-repeats", type=int, default=4,
                        help="completions of each held-out 3 in the 3-to-8 examples")
    parser.add_argument("--edit-guidance", type=float, default=3.0,
                        help="guidance scale when an edit asks for a class")
    parser.add_argument("--picture-guidance", type=float, default=3.0,
                        help="guidance scale of the samples in the picture")
    parser.add_argument("--picture-columns", type=int, default=8,
                        help="samples per class in the picture")
    parser.add_argument("--seed", type=int, default=0,
                        help="seeds training, sampling and the edits")
    return parser


def main() -> None:
    args = build_parser().parse_args()
    if args.picture_guidance not in args.guidances:
        args.guidances.append(args.picture_guidance)
    os.makedirs(args.out, exist_ok=True)
    started = time.perf_counter()

    loop = trained_loop(args)
    dataset = run.load_run_data(loop.config)
    classifier, classifier_accuracy = load_classifier(dataset)
    print(f"classifier: held-out accuracy {classifier_accuracy:.1%}")

    # 1. Guided sampling.
    rows, samples = guidance_table(loop, dataset, classifier, args)
    floor = metrics.fid_floor(dataset, args.per_class * dataset.num_classes, classifier)
    print(f"\n1. guided samples ({args.per_class} per class, DDIM {args.sampling_steps} steps): "
          "share read as the asked class")
    print(f"{'w':>5} | {'all classes':>11} | {'worst class':>15} | {'FID':>6}")
    for guidance, mean, worst, worst_class, fid in rows:
        print(f"{guidance:>5g} | {mean:>11.1%} | {worst:>9.1%} ({worst_class}) | {fid:>6.2f}")
    print(f"(FID of {args.per_class * dataset.num_classes} real training digits: {floor:.2f})")

    # 2. and 3. Editing held-out digits, toward a random other class or toward none.
    images, labels = dataset.test[:args.edit_count], dataset.test_labels[:args.edit_count]
    targets = other_classes(labels, dataset.num_classes, args.seed)
    as_example = inpainting_table(loop, dataset, classifier, images, labels, targets, args)
    img2img_table(loop, dataset, classifier, images, labels, targets, args)

    inpainting, img2img_rows = picture_rows(loop, dataset, images[:4], targets[:4], args)
    for path in figure_paths(args, "editing"):
        draw_figure(path, samples, inpainting, img2img_rows, targets[:4], args)
        print(f"\nwrote {path}")
    print(f"done in {time.perf_counter() - started:.0f} s")
    guided = dict((guidance, mean) for guidance, mean, *_ in rows)
    print(f"guided samples read as the asked class at w = {args.picture_guidance:g}: "
          f"{guided[args.picture_guidance]:.1%}; {_opposite(INPAINT_REGION)} halves of "
          f"{INPAINT_SOURCE}s completed as {INPAINT_TARGET}s: {as_example:.1%}")


if __name__ == "__main__":
    main()
