"""The browser app: super-resolve an image with a reference in a local web page, compare it with
bicubic upsampling, and click the output to see where each texture came from.

  python -m ttsr_jax.app [--checkpoint CKPT] [--host 127.0.0.1] [--port 7860] [--ref_pool DIR]
                         [--max_pixels N]

docs/app.md describes the page. The request handlers (`super_resolve_request`, `explore`) are
plain functions of numpy arrays and file paths, tested without a server; `build_page` wires them
into a Gradio page whose queue runs one request at a time on the one model, so the compiled
programs of `ttsr_jax.predict` are reused by every request of the same sizes.
"""

import argparse
import dataclasses
import pathlib
import sys
import tempfile
import time
import traceback
from typing import Any, NamedTuple, Optional, Sequence

from absl import logging as absl_logging
import gradio as gr
import jax
import numpy as np
from PIL import Image, ImageDraw

from data_pipeline import files
from data_pipeline import samples
from data_pipeline.samples import SCALE
from ttsr_jax import checkpoint
from ttsr_jax import demo_model
from ttsr_jax import explain
from ttsr_jax import generators
from ttsr_jax import metrics
from ttsr_jax import predict
from ttsr_jax import references
from ttsr_jax.models.ttsr import TTSR

# Uploads larger than this are refused by the server before any decoding.
MAX_UPLOAD = "50mb"
MAX_PICK = 5
# The authors' demo pair (LR, reference), offered as the page's example.
DEMO_PAIR = tuple(demo_model.CHECKPOINT.parents[1] / "demo" / kind / "0.png"
                  for kind in ("lr", "ref"))
IMAGE_HEIGHT = 420  # display height of the page's images, in CSS pixels
# The explorer's marks: a red outline, a yellow ring around it (radius at least RING_MIN_RADIUS
# pixels), and the rest of the reference dimmed to DIM of its brightness.
MARK_COLOUR = (255, 0, 0)
RING_COLOUR = (255, 255, 0)
RING_MIN_RADIUS = 16
DIM = 0.35


class AppError(Exception):
  """A problem with what the visitor sent: shown as one line in the page."""


@dataclasses.dataclass(frozen=True)
class Pool:
  """Candidate references fixed on the command line, with their relevance descriptors."""

  paths: tuple[pathlib.Path, ...]
  descriptors: np.ndarray


@dataclasses.dataclass(frozen=True)
class Engine:
  """The model every request uses, and the server's limits."""

  model: TTSR
  params: dict
  description: str
  max_pixels: int = predict.DEFAULT_MAX_PIXELS
  pool: Optional[Pool] = None


class Result(NamedTuple):
  """One super-resolved request: the images used and made, and what the page reports.

  lr: the uint8 LR image (the downscaled photo with `downscale`); bicubic: its x4 bicubic; ref: the
  (stitched, cropped) reference; original: the photo cropped to multiples of 4 with `downscale`,
  else None; scores: {'TTSR': (PSNR, SSIM), 'bicubic': (PSNR, SSIM)} against the original;
  picked: (file name, relevance) of the references picked from a pool.
  """

  lr: np.ndarray
  bicubic: np.ndarray
  ref: np.ndarray
  prediction: predict.Prediction
  seconds: float
  original: Optional[np.ndarray]
  scores: dict[str, tuple[float, float]]
  picked: list[tuple[str, float]]


def load_engine(checkpoint_path: pathlib.Path, *, ref_pool: Optional[pathlib.Path] = None,
                max_pixels: int = predict.DEFAULT_MAX_PIXELS) -> Engine:
  """The model of a checkpoint (any kind `ttsr_jax.infer` takes) and the server's pool.

  Raises:
    checkpoint.CheckpointError: the checkpoint cannot be loaded.
    files.DatasetError: the pool directory is missing, empty or holds an unreadable image.
  """
  params, model = generators.load(checkpoint_path)
  module = model.build(search_chunk_size=predict.DEFAULT_SEARCH_CHUNK_SIZE)
  params = jax.device_put(params)
  if pathlib.Path(checkpoint_path).resolve() == demo_model.CHECKPOINT:
    description = demo_model.DESCRIPTION
  else:
    description = f"{pathlib.Path(checkpoint_path).name} ({model.describe()})"
  pool = None
  if ref_pool is not None:
    paths = tuple(files.list_images(ref_pool))
    pool = Pool(paths, references.describe_files(paths, params))
  return Engine(module, params, description, max_pixels, pool)


def read_upload(path: str, what: str, min_size: int) -> np.ndarray:
  """An uploaded image as uint8 RGB; AppError naming the upload by its file name if unusable."""
  try:
    return files.read_rgb(path, min_size=min_size)
  except files.DatasetError as e:
    # The message starts with the server's temporary path; the visitor knows the file's name.
    raise AppError(f"{what}: {str(e).replace(str(path), pathlib.Path(path).name)}") from None


def _referenced(engine: Engine, lr: np.ndarray, reference_paths: Sequence[str],
                pool_paths: Sequence[str], pick: int
                ) -> tuple[list[np.ndarray], list[tuple[str, float]]]:
  """The reference images of a request, and (name, relevance) of those picked from a pool."""
  if reference_paths:
    return [read_upload(p, "reference", predict.MIN_REF_SIDE) for p in reference_paths], []
  if pool_paths:
    candidates = [read_upload(p, "pool photo", predict.MIN_REF_SIDE) for p in pool_paths]
    names = [pathlib.Path(p).name for p in pool_paths]
    pool = references.describe([lambda c=c: c for c in candidates], engine.params)
    load = candidates.__getitem__
  elif engine.pool is not None:
    names = [p.name for p in engine.pool.paths]
    pool = engine.pool.descriptors
    load = lambda i: files.read_rgb(engine.pool.paths[i], min_size=predict.MIN_REF_SIDE)
  else:
    raise AppError("no reference: upload one or several reference photos, or a pool to pick "
                   "from")
  chosen = references.pick(lr, pool, engine.params, pick)
  return [load(i) for i, _ in chosen], [(names[i], score) for i, score in chosen]


def super_resolve_request(engine: Engine, image_path: Optional[str], downscale: bool,
                          reference_paths: Sequence[str] = (), pool_paths: Sequence[str] = (),
                          pick: int = 1, progress: Optional[predict.Progress] = None) -> Result:
  """Super-resolves an uploaded image with uploaded references, or with the `pick` most relevant
  of an uploaded pool (else of the server's pool).

  With `downscale` the image is a high-resolution photo: it is cropped to multiples of 4 and
  downscaled x4 with Pillow's bicubic (as the datasets' LR images are made), and the result and
  bicubic upsampling are scored against it (the reference's Y-channel PSNR and SSIM).

  Raises:
    AppError: a missing, unreadable or too small upload, or sizes above `engine.max_pixels`.
  """
  start = time.perf_counter()
  if not image_path:
    raise AppError("no image: upload a low-resolution image, or a photo with 'downscale x4 "
                   "first'")
  original = None
  if downscale:
    original = samples.crop_to_multiple(
        read_upload(image_path, "image", SCALE * predict.MIN_LR_SIDE))
    lr = samples.down_up(original)[0]
  else:
    lr = read_upload(image_path, "image", predict.MIN_LR_SIDE)
  refs, picked = _referenced(engine, lr, reference_paths, pool_paths, pick)
  ref = references.stitch(refs)
  try:
    predict.check_sizes(lr.shape, ref.shape, engine.max_pixels)
  except predict.SizeError as e:
    raise AppError(f"image: {e}") from None
  images = predict.prepare_inputs(lr, ref)
  prediction = predict.super_resolve(engine.model, engine.params, images, progress=progress)
  scores = {}
  if original is not None:
    scores = {name: (metrics.calc_psnr(image, original), metrics.calc_ssim(image, original))
              for name, image in (("TTSR", prediction.sr), ("bicubic", images["lrsr"]))}
  return Result(lr, images["lrsr"], images["ref"], prediction, time.perf_counter() - start,
                original, scores, picked)


def reference_box(result: Result, lr_y: int, lr_x: int) -> tuple[int, int, int, int]:
  """(top, left, bottom, right) reference pixels of the 3x3 lv3 patch whose texture LR position
  (lr_y, lr_x) used: its hard-attention index, each lv3 position covering 4x4 pixels."""
  grid_h, grid_w = result.prediction.grid_hw
  row, col = divmod(int(result.prediction.index[lr_y, lr_x]), grid_w)
  top, left = SCALE * max(row - 1, 0), SCALE * max(col - 1, 0)
  return top, left, SCALE * min(row + 2, grid_h), SCALE * min(col + 2, grid_w)


def nearest_x4(image: np.ndarray) -> np.ndarray:
  """The LR image at the output's size, each pixel a 4x4 block, so single pixels can be seen."""
  return image.repeat(SCALE, axis=0).repeat(SCALE, axis=1)


def _outline(image: np.ndarray, box: tuple[int, int, int, int], width: int) -> np.ndarray:
  """A copy of `image` with a MARK_COLOUR rectangle `width` pixels wide around (t, l, b, r)."""
  top, left, bottom, right = box
  marked = Image.fromarray(image)
  ImageDraw.Draw(marked).rectangle((left - width, top - width, right + width - 1,
                                    bottom + width - 1), outline=MARK_COLOUR, width=width)
  return np.asarray(marked)


def _ring(image: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
  """A copy of `image` with a RING_COLOUR circle around (t, l, b, r), large enough to find the
  small box on a large image."""
  top, left, bottom, right = box
  radius = max(RING_MIN_RADIUS, max(image.shape[:2]) // 20)
  y, x = (top + bottom) / 2, (left + right) / 2
  marked = Image.fromarray(image)
  ImageDraw.Draw(marked).ellipse((x - radius, y - radius, x + radius, y + radius),
                                 outline=RING_COLOUR, width=2)
  return np.asarray(marked)


def explore(result: Result, x: int, y: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
  """What the output pixel (x, y) (column, row) was made from: the output with that pixel's LR
  position outlined; the LR image (x4, nearest) with that position outlined; the reference dimmed
  except the patch whose texture was used there, outlined; and a line saying so with the
  confidence S there. A ring around each outline helps to find it."""
  lr_h, lr_w = result.prediction.index.shape
  lr_x, lr_y = min(max(x // SCALE, 0), lr_w - 1), min(max(y // SCALE, 0), lr_h - 1)
  lr_box = (SCALE * lr_y, SCALE * lr_x, SCALE * (lr_y + 1), SCALE * (lr_x + 1))
  sr_marked = _ring(_outline(result.prediction.sr, lr_box, width=2), lr_box)
  lr_marked = _ring(_outline(nearest_x4(result.lr), lr_box, width=2), lr_box)
  ref_box = top, left, bottom, right = reference_box(result, lr_y, lr_x)
  dimmed = np.round(result.ref * DIM).astype(np.uint8)
  dimmed[top:bottom, left:right] = result.ref[top:bottom, left:right]
  ref_marked = _ring(_outline(dimmed, ref_box, width=2), ref_box)
  confidence = float(result.prediction.s[lr_y, lr_x])
  text = (f"output ({x}, {y}) comes from LR pixel ({lr_x}, {lr_y}); its texture was taken from "
          f"reference pixels x {left}-{right - 1}, y {top}-{bottom - 1} "
          f"(confidence S = {confidence:.3f})")
  return sr_marked, lr_marked, ref_marked, text


def summary(result: Result) -> str:
  """Markdown: sizes and time, the references picked, and the scores with `downscale`."""
  lr_h, lr_w = result.lr.shape[:2]
  ref_h, ref_w = result.ref.shape[:2]
  lines = [f"LR {lr_w} x {lr_h} -> output {SCALE * lr_w} x {SCALE * lr_h}, reference "
           f"{ref_w} x {ref_h} (width x height), in {result.seconds:.2f} s (the first request of "
           "new sizes includes compiling the model for them)"]
  if result.picked:
    lines.append("references picked from the pool (relevance): " + ", ".join(
        f"{name} ({score:.3f})" for name, score in result.picked))
  if result.scores:
    lines.append("| against the original | PSNR (dB) | SSIM |\n|---|---|---|\n" + "\n".join(
        f"| {name} | {psnr:.2f} | {ssim:.4f} |" for name, (psnr, ssim) in result.scores.items()))
  return "\n\n".join(lines)


def _save_png(image: np.ndarray, directory: pathlib.Path, name: str) -> str:
  """Writes `name` in a new folder of `directory`, so requests never overwrite each other."""
  path = pathlib.Path(tempfile.mkdtemp(dir=directory)) / name
  Image.fromarray(image).save(path, format="PNG")
  return str(path)


def _failure(error: Exception) -> str:
  """The page's one line for a failed request; unexpected errors go to the server's log too."""
  if isinstance(error, AppError):
    return f"**Error:** {error}"
  traceback.print_exception(error)
  return (f"**Error:** the request failed ({type(error).__name__}: "
          f"{str(error).splitlines()[0] if str(error) else 'no message'}); the next one may "
          "still work")


def _upload_paths(value: Any) -> list[str]:
  return [] if not value else [str(v) for v in (value if isinstance(value, list) else [value])]


# What `handle_run` returns, in the order of the page's components.
RUN_OUTPUTS = ("last", "status", "download", "slider", "output", "explanation", "lr_view",
               "ref_view", "confidence")


def handle_run(engine: Engine, downloads: pathlib.Path, image_value: Any, downscale: bool,
               refs_value: Any, pool_value: Any, pick: float,
               progress: Optional[predict.Progress] = None) -> tuple:
  """The page's run button: `super_resolve_request` on Gradio's upload values, as the values of
  RUN_OUTPUTS, the PNG to download written under `downloads`. A failed request clears the
  outputs and puts one line in 'status'."""
  try:
    image_paths = _upload_paths(image_value)
    result = super_resolve_request(
        engine, image_paths[0] if image_paths else None, downscale, _upload_paths(refs_value),
        _upload_paths(pool_value), int(pick), progress=progress)
  except Exception as e:  # pylint: disable=broad-except
    return (None, _failure(e), None, None, None, "", None, None, None)
  sr = result.prediction.sr
  download = _save_png(sr, downloads, f"{pathlib.Path(image_paths[0]).stem}_x4.png")
  return (result, summary(result), download,
          (result.bicubic, sr), sr, "Click a point of the TTSR output.",
          nearest_x4(result.lr), result.ref,
          explain.confidence_image(result.prediction.s))


def build_page(engine: Engine, downloads: pathlib.Path) -> gr.Blocks:
  """The Gradio page over `engine`, writing the PNGs to download under `downloads`; call
  `.queue()` and `.launch()` on it."""
  # No telemetry from a local app; Gradio's copies of uploads and outputs go after an hour.
  with gr.Blocks(title="TTSR super-resolution", analytics_enabled=False,
                 delete_cache=(3600, 3600)) as page:
    gr.Markdown("# TTSR: reference-based x4 super-resolution\n\n"
                "Upload an image and a reference photo of similar content (or pick the example "
                "below), then *Super-resolve*; click the output to see where its textures came "
                f"from. Model: {engine.description}.")
    last = gr.State(None)
    with gr.Row():
      with gr.Column(scale=1):
        image = gr.File(label="Image: low-resolution, or a photo to downscale x4 first",
                        elem_id="image")
        downscale = gr.Checkbox(label="downscale x4 first (then PSNR/SSIM against the original "
                                "are shown)", elem_id="downscale")
        refs = gr.File(label="Reference photo(s): several are stitched into one",
                       file_count="multiple", elem_id="refs")
        pool_note = (f" (else the server's {len(engine.pool.paths)} photos)"
                     if engine.pool is not None else "")
        with gr.Accordion("No reference? Pick from a pool" + pool_note,
                          open=engine.pool is not None):
          pool = gr.File(label="candidate photos", file_count="multiple", elem_id="pool")
          pick = gr.Slider(1, MAX_PICK, value=1, step=1, label="how many to pick (most relevant "
                           "first, stitched)", elem_id="pick")
        run = gr.Button("Super-resolve", variant="primary", elem_id="run")
        gr.Examples([[str(DEMO_PAIR[0]), False, [str(DEMO_PAIR[1])]]], [image, downscale, refs],
                    label="Example: the authors' demo pair")
        status = gr.Markdown(elem_id="status")
        download = gr.File(label="Download the PNG", elem_id="download")
      with gr.Column(scale=2):
        slider = gr.ImageSlider(label="bicubic x4 | TTSR x4: drag the handle", type="numpy",
                                format="png", max_height=IMAGE_HEIGHT, elem_id="slider")
      with gr.Column(scale=2):
        confidence = gr.Image(label="confidence S: how well each position's reference patch "
                              "matched", type="numpy", format="png", interactive=False,
                              height=IMAGE_HEIGHT, elem_id="confidence")
    gr.Markdown("## Where each texture came from")
    explanation = gr.Markdown("Click a point of the TTSR output.", elem_id="explanation")
    with gr.Row():
      output = gr.Image(label="TTSR x4: click a point", type="numpy", format="png",
                        interactive=False, height=IMAGE_HEIGHT, elem_id="output")
      lr_view = gr.Image(label="LR image: that point", type="numpy", format="png",
                         interactive=False, height=IMAGE_HEIGHT, elem_id="lr_view")
      ref_view = gr.Image(label="reference: the patch whose texture was used there",
                          type="numpy", format="png", interactive=False, height=IMAGE_HEIGHT,
                          elem_id="ref_view")

    def on_run(image_value, downscale_value, refs_value, pool_value, pick_value,
               progress=gr.Progress()):
      return handle_run(
          engine, downloads, image_value, downscale_value, refs_value, pool_value, pick_value,
          progress=lambda done, total: progress(done / total, desc=f"tile {done} of {total}"))

    def on_select(result: Optional[Result], event: gr.SelectData):
      if result is None:
        return None, None, None, ""
      x, y = event.index
      return explore(result, int(x), int(y))

    run.click(on_run, [image, downscale, refs, pool, pick],
              [last, status, download, slider, output, explanation, lr_view, ref_view,
               confidence])
    output.select(on_select, [last], [output, lr_view, ref_view, explanation])
  return page


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog="python -m ttsr_jax.app",
      description="A local web page to try TTSR: upload an image and a reference, compare with "
      "bicubic, see where each texture came from.")
  parser.add_argument("--checkpoint", type=pathlib.Path, default=demo_model.CHECKPOINT,
                      help="Orbax checkpoint (workdir, workdir/checkpoints or a step directory) "
                      "or reference state dict (.pt/.pth/.npz) (default: the small demo model "
                      "that ships in assets/demo_model)")
  parser.add_argument("--host", default="127.0.0.1",
                      help="address to listen on (default: %(default)s, this machine only; "
                      "0.0.0.0 lets other machines in)")
  parser.add_argument("--port", type=int, default=7860, help="port (default: %(default)s)")
  parser.add_argument("--ref_pool", type=pathlib.Path, default=None,
                      help="a directory of candidate references that visitors may pick from")
  parser.add_argument("--max_pixels", type=int, default=predict.DEFAULT_MAX_PIXELS,
                      help="largest output and reference, in pixels (default: %(default)s, "
                      "7680x4320)")
  return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
  """The command line; returns the exit status (1 for a checkpoint or pool that cannot be used)."""
  args = _parser().parse_args(argv)
  absl_logging.set_verbosity(absl_logging.ERROR)  # Orbax reports every restore at INFO
  try:
    engine = load_engine(args.checkpoint, ref_pool=args.ref_pool, max_pixels=args.max_pixels)
  except (checkpoint.CheckpointError, files.DatasetError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  with tempfile.TemporaryDirectory(prefix="ttsr_app_") as downloads:
    page = build_page(engine, pathlib.Path(downloads)).queue(default_concurrency_limit=1)
    page.launch(server_name=args.host, server_port=args.port, max_file_size=MAX_UPLOAD)
  return 0


if __name__ == "__main__":
  sys.exit(main())
