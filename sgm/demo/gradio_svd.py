"""The Gradio image-to-video page (``scripts/demo/gradio_app.py``): SVD-XT 1.1, one image
in, one mp4 out. The model loads on the first request; nothing is downloaded."""

from __future__ import annotations

import os
import random
import threading
from pathlib import Path
from typing import Any

from .. import values
from ..errors import SgmError
from .options import DemoOptions, missing_checkpoint
from .video import (
    VIDEO_VERSIONS,
    VideoRequest,
    check_video_request,
    fit_image,
    generate_video,
    input_tensor,
    load_model,
    save_outputs,
    video_model,
)

VERSION = "svd_xt_1_1"
TITLE = "Stable Video Diffusion: image to video (SVD-XT 1.1)"
MAX_SEED = 2**32 - 1  # what NumPy and Lightning take (sgm.cli.MAX_SEED)


class SvdApp:
    """The page's model and handlers, independent of the widgets."""

    def __init__(
        self,
        options: DemoOptions,
        width: int = 1024,
        height: int = 576,
        frames: int | None = None,
        steps: int | None = None,
        decoding_t: int = 7,
        low_vram: bool = False,
    ) -> None:
        spec = VIDEO_VERSIONS[VERSION]
        self.options, self.low_vram = options, low_vram
        self.files = video_model(VERSION, options)
        self.base = VideoRequest(
            VERSION,
            width,
            height,
            frames or spec.frames,
            steps or spec.steps,
            decoding_t=decoding_t,
        )
        check_video_request(self.base)
        self.model: Any = None
        self.lock = threading.Lock()

    @property
    def problem(self) -> str | None:
        """The missing-checkpoint message, or None."""
        return missing_checkpoint(self.files)

    def resize(self, image: Any) -> Any:
        """The uploaded image scaled and centre-cropped to the model's frame size."""
        if image is None:
            return None
        return fit_image(image, self.base.width, self.base.height)

    def sample(
        self,
        image: Any,
        seed: int | None = None,
        randomize_seed: bool = True,
        motion_bucket_id: int = 127,
        fps_id: int = 6,
    ) -> tuple[str, int]:
        """Sample a video; returns (mp4 path, seed used). Bad input raises ``SgmError``
        before the model is touched."""
        if randomize_seed or seed is None:
            seed = random.randint(0, MAX_SEED)
        problem = self.problem
        if problem:
            from ..errors import CheckpointError

            raise CheckpointError(problem)
        request = VideoRequest(
            **{
                **self.base.__dict__,
                "seed": values.seed(seed),
                "motion_bucket_id": values.whole("motion bucket id", motion_bucket_id, 0),
                "fps": values.whole("fps_id", fps_id, 0) + 1,
            }
        )
        check_video_request(request)
        tensor = input_tensor(image, request)
        with self.lock:
            if self.model is None:
                self.model = load_model(self.files, request, self.options.device, self.low_vram)
            from ..inference.helpers import model_device

            frames = generate_video(self.model, tensor.to(model_device(self.model)), request)
            path = save_outputs(frames, Path(self.options.outputs), request.fps)
        return str(path), int(seed)


def build_demo(app: SvdApp) -> Any:
    """The ``gradio.Blocks`` page around ``app``."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    import gradio as gr

    def run(image: Any, seed: float, randomize: bool, motion: float, fps: float) -> tuple:
        try:
            return app.sample(image, int(seed), randomize, int(motion), int(fps))
        except SgmError as error:
            raise gr.Error(str(error)) from None

    def resize(image: Any) -> Any:
        try:
            return app.resize(image)
        except SgmError as error:
            raise gr.Error(str(error)) from None

    with gr.Blocks(title=TITLE) as demo:
        gr.Markdown(f"# {TITLE}")
        if app.problem:
            gr.Markdown(f"**{app.problem}**", elem_id="missing-checkpoint")
        with gr.Row():
            with gr.Column():
                # a file path: the handlers read it, its header's size checked first
                image = gr.Image(label="Upload your image", type="filepath")
                generate = gr.Button("Generate", variant="primary")
            video = gr.Video(label="Generated video")
        with gr.Accordion("Advanced options", open=False):
            seed = gr.Slider(0, MAX_SEED, value=42, step=1, label="Seed")
            randomize = gr.Checkbox(value=True, label="Randomize seed")
            motion = gr.Slider(
                1,
                255,
                value=127,
                step=1,
                label="Motion bucket id",
                info="how much motion: higher is more",
            )
            fps = gr.Slider(
                5,
                30,
                value=6,
                step=1,
                label="Frames per second",
                info="the video's frame rate (conditioning fps_id)",
            )
        image.upload(fn=resize, inputs=image, outputs=image, queue=False)
        generate.click(
            fn=run,
            inputs=[image, seed, randomize, motion, fps],
            outputs=[video, seed],
            api_name="video",
        )
    return demo
