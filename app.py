"""Browser demo: upload a powder pattern or a CIF, get its most probable space groups.

A Gradio app in the Hugging Face Space layout (this file exposes ``demo``)::

    pip install -e .[demo]
    python app.py                                   # then open http://127.0.0.1:7860
    PHYSMOE_MODEL=outputs/quickstart python app.py  # another checkpoint folder or Hub id

The model is ``$PHYSMOE_MODEL`` when set, else the checkpoint shipped in the package
(:func:`physmoe.inference.default_checkpoint`), else ``outputs/quickstart``. Everything about
reading files (which formats, which wavelength) is :meth:`SpaceGroupPredictor.predict_file`'s;
its error messages are shown as they are.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
from pathlib import Path

import gradio as gr
import pandas as pd
from matplotlib.figure import Figure

from physmoe.inference import SpaceGroupPredictor, default_checkpoint

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no telemetry, no version check
logger = logging.getLogger("physmoe.app")

ROOT = Path(__file__).resolve().parent
QUICKSTART = ROOT / "outputs" / "quickstart"
EXAMPLES = sorted((ROOT / "examples").glob("*.cif"))
TOP_K = 5
COLUMNS = ["rank", "space group", "no.", "crystal system", "probability"]

# -------------------------------------------------------------------------------------- model


def model_location() -> str:
    """``$PHYSMOE_MODEL``, else the shipped checkpoint, else ``outputs/quickstart``."""
    if os.environ.get("PHYSMOE_MODEL"):
        return os.environ["PHYSMOE_MODEL"]
    try:
        return str(default_checkpoint())
    except FileNotFoundError as error:
        if (QUICKSTART / "config.json").is_file():
            return str(QUICKSTART)
        raise FileNotFoundError(
            f"no model to serve: {error}. Set PHYSMOE_MODEL to a checkpoint folder or Hub id, "
            f"or train one into {QUICKSTART} (scripts/quickstart.sh)"
        ) from None


class DemoPredictor(SpaceGroupPredictor):
    """A :class:`SpaceGroupPredictor` that keeps its last model input, for the plot: the
    pattern after the package's preprocessing, on the model's 2θ grid, scaled to maximum 1."""

    last_input = None

    def predict_input_values(self, input_values, *args, **kwargs):
        self.last_input = self.normalize_input_values(input_values)[0].numpy()
        return super().predict_input_values(input_values, *args, **kwargs)


def load_predictor(model: str | None = None) -> DemoPredictor:
    """The predictor for ``model`` (default: :func:`model_location`), loaded once, on first use."""
    return _load(model or model_location())


@functools.cache
def _load(location: str) -> DemoPredictor:
    logger.info("loading the model from %s", location)
    return DemoPredictor.from_pretrained(location)


_LOCK = threading.Lock()  # one prediction at a time: last_input belongs to it

# ---------------------------------------------------------------------------------- prediction


def predict(file, wavelength=None, min_confidence=0.0, model=None):
    """The app's answer for an uploaded file: (top-5 table, crystal-system probabilities,
    figure of the model input, summary in Markdown). Package errors become ``gr.Error``."""
    if not file:
        raise gr.Error("Upload a pattern file or a CIF first.", print_exception=False)
    path = Path(file)
    predictor = load_predictor(model)
    try:
        with _LOCK:
            result = predictor.predict_file(
                path,
                wavelength=wavelength or None,  # 0 or empty: the file's, else the model's
                top_k=TOP_K,
                min_confidence=min_confidence or None,  # 0 = off
            )
            pattern = predictor.last_input
    except (ValueError, OSError, RuntimeError) as error:
        # The package's message, without the upload folder Gradio put the file in.
        message = str(error).replace(f"{path.parent}{os.sep}", "")
        raise gr.Error(message, print_exception=False) from None
    table = pd.DataFrame(
        [
            [c.rank, c.symbol, c.space_group, c.crystal_system, round(c.probability, 4)]
            for c in result.candidates
        ],
        columns=COLUMNS,
    )
    figure = plot_pattern(predictor, pattern, result.source)
    return table, result.crystal_system_probabilities, figure, summary(predictor, result)


def summary(predictor: SpaceGroupPredictor, result) -> str:
    """The verdict in Markdown: best group, uncertainty, powder-equivalent set, wavelength."""
    best = result.best
    lines = [
        f"**Most probable: `{best.symbol}` (no. {best.space_group})**, {best.crystal_system}, "
        f"probability {best.probability:.3f}"
    ]
    if result.uncertain:
        lines.append(
            f"**uncertain**: best probability {best.probability:.3f} is below the "
            f"min confidence {result.min_confidence:g}"
        )
    if result.indistinguishable:
        lines.append(
            f"Indistinguishable by powder: `{'`, `'.join(result.indistinguishable)}` "
            f"(summed probability {result.indistinguishable_probability:.3f})"
        )
    if result.wavelength is None:  # a CIF: its clean pattern is simulated at the model's
        lines.append(
            f"Wavelength: the CIF's pattern is simulated at the model's "
            f"{predictor.grid.wavelength:g} Å"
        )
    else:
        lines.append(
            f"Wavelength: {result.wavelength_note or f'{result.wavelength:g} Å, as given'}"
        )
    return "\n\n".join(lines)


def plot_pattern(predictor: SpaceGroupPredictor, pattern, source: str) -> Figure:
    """The model input over the model's 2θ grid."""
    grid = predictor.grid
    figure = Figure(figsize=(8, 3.4), layout="constrained")
    axes = figure.add_subplot()
    axes.plot(grid.values(), pattern, lw=0.8, color="tab:blue", label=source)
    axes.legend(loc="upper right", frameon=False)
    axes.set(
        xlabel=f"2θ (degrees) at λ = {grid.wavelength:g} Å, {grid.num_points} grid points",
        ylabel="intensity (max 1)",
        xlim=(grid.two_theta_min, grid.two_theta_max),
        ylim=(0, 1.08),
    )
    axes.set_title("What the model sees: the input on its 2θ grid", fontsize=10)
    return figure


# -------------------------------------------------------------------------------------- layout


def build_demo(model: str | None = None) -> gr.Blocks:
    """The Gradio app; the model (default: :func:`model_location`) loads on the first request."""
    with gr.Blocks(title="PhysMoE space groups", analytics_enabled=False) as blocks:
        gr.Markdown(
            "# Space group from a powder X-ray diffraction pattern\n"
            "Upload a pattern (2θ, intensity) or a CIF; the model ranks the 230 space "
            "groups with calibrated probabilities."
        )
        with gr.Row():
            with gr.Column(scale=2):
                file = gr.File(label="Pattern file or CIF", type="filepath", elem_id="file")
                wavelength = gr.Number(
                    0,
                    label="Wavelength (Å)",
                    minimum=0,
                    info="0: as stated in the file, else the model's",
                )
                min_confidence = gr.Slider(
                    0,
                    1,
                    value=0,
                    step=0.05,
                    label="Min confidence",
                    info="flag answers below it as uncertain (0 = off)",
                    elem_id="min_confidence",
                )
                button = gr.Button("Predict", variant="primary", elem_id="predict")
                gr.Examples([[str(path)] for path in EXAMPLES], inputs=[file])
            with gr.Column(scale=3):
                verdict = gr.Markdown(elem_id="summary")
                table = gr.Dataframe(
                    headers=COLUMNS,
                    label=f"Top {TOP_K} space groups",
                    interactive=False,
                    elem_id="top5",
                )
        with gr.Row():
            systems = gr.Label(num_top_classes=7, label="Crystal system", scale=2)
            figure = gr.Plot(label="What the model sees", show_label=False, scale=3)
        button.click(
            functools.partial(predict, model=model),
            inputs=[file, wavelength, min_confidence],
            outputs=[table, systems, figure, verdict],
            api_name="predict",
        )
    return blocks


demo = build_demo()

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:
        load_predictor()  # now, not at the first request
    except FileNotFoundError as error:
        raise SystemExit(f"app.py: {error}") from None
    demo.launch()
