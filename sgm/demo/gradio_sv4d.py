"""The Gradio SV4D page (``scripts/demo/gradio_app_sv4d.py``): an object video in, SV3D's
views of its first frame and a 3 x 3 grid video of the input view and the eight novel
views out. Models load on the first request; nothing is downloaded."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import torch

from .. import values
from ..errors import CheckpointError, InputError, SgmError
from ..inference.releases import config_path, get_release, releases
from .options import DemoOptions, missing_checkpoint, model_files

TITLE = "Stable Video 4D: novel-view videos (SV4D)"
SV3D_VERSIONS = tuple(r.name for r in releases("video") if r.is_sv3d)


def grid_video(grid: list, rows: int = 3) -> torch.Tensor:
    """Frames ``(T, 3, rows*H, cols*W)`` in [0, 1] tiling every view of each frame."""
    from ..inference.sv4d import view_video

    views = [view_video(grid, v) for v in range(len(grid[0]))]
    cols = -(-len(views) // rows)
    while len(views) < rows * cols:
        views.append(torch.ones_like(views[0]))
    lines = [torch.cat(views[r * cols : (r + 1) * cols], dim=-1) for r in range(rows)]
    return torch.cat(lines, dim=-2)


def _files(name: str, options: DemoOptions, selected: bool = True) -> Any:
    """The config and checkpoint of a release (``sgm.inference.releases``)."""
    release = get_release(name)
    config = config_path(release)
    return model_files(name, config.name, release.ckpt, config.parent, options, selected)


class Sv4dApp:
    """The page's models and handler, independent of the widgets."""

    def __init__(
        self,
        options: DemoOptions,
        img_size: int = 576,
        sv3d_version: str = "sv3d_u",
        low_vram: bool = False,
    ) -> None:
        from ..inference.sv4d import check_size

        check_size(img_size)
        if sv3d_version not in SV3D_VERSIONS:
            known = " or ".join(SV3D_VERSIONS)
            raise InputError(f"sv3d_version must be {known}, got {sv3d_version!r}")
        self.options, self.img_size, self.low_vram = options, img_size, low_vram
        self.sv3d_version = sv3d_version
        self.sv4d_files = _files("sv4d", options)
        self.sv3d_files = _files(sv3d_version, options, selected=False)
        self.models: dict[str, Any] = {}
        self.lock = threading.Lock()

    @property
    def problem(self) -> str | None:
        """The first missing-checkpoint message, or None."""
        return missing_checkpoint(self.sv4d_files) or missing_checkpoint(self.sv3d_files)

    def _model(self, name: str) -> Any:
        from ..inference.video import load_video_model
        from ..util import resolve_device

        if name not in self.models:
            files = self.sv4d_files if name == "sv4d" else self.sv3d_files
            release = get_release("sv4d" if name == "sv4d" else self.sv3d_version)
            frames = release.n_time * release.n_view if release.n_time else release.num_frames
            self.models[name] = load_video_model(
                files.config,
                files.ckpt,
                resolve_device(self.options.device),
                num_frames=frames,
                num_steps=20,
                offload=self.low_vram,
            )
        return self.models[name]

    def sample(
        self,
        video: str | None,
        seed: int = 23,
        num_steps: int = 20,
        encoding_t: int = 8,
        decoding_t: int = 4,
        remove_bg: bool = False,
    ) -> tuple[str, str]:
        """Sample; returns (SV3D views mp4, 3 x 3 grid mp4). Bad input raises ``SgmError``
        before a model is touched."""
        from ..inference import sv4d, sv4d_job, video_io
        from ..util import resolve_device

        if not video:
            raise InputError("no input video: upload a gif or mp4 first")
        seed = values.seed(seed)
        num_steps = values.whole("num_steps", num_steps, 1)
        encoding_t = values.whole("encoding_t", encoding_t, 1)
        decoding_t = values.whole("decoding_t", decoding_t, 1)
        if self.problem:
            raise CheckpointError(self.problem)
        if remove_bg:
            video_io.check_background_removal()
        frames = sv4d_job.read_input(str(video), sv4d.SV4D_FRAMES)
        polars, azimuths = sv4d.orbit_rad(sv4d.SV3D_VIEWS, 10.0, None)
        processed = sv4d_job.prepare_input(frames, self.img_size, 0.917, bool(remove_bg))
        tensor = video_io.frames_to_tensor(processed)
        device = resolve_device(self.options.device)
        generator = torch.Generator().manual_seed(int(seed))
        camera = self.sv3d_version == "sv3d_p"
        with self.lock:
            reference = sv4d.sv3d_reference(
                self._model("sv3d"),
                tensor[0],
                polars if camera else None,
                azimuths if camera else None,
                generator,
                int(decoding_t),
                num_steps=int(num_steps),
            )
            grid = sv4d.sample_sv4d(
                self._model("sv4d"),
                tensor,
                reference,
                polars,
                azimuths,
                int(num_steps),
                generator,
                device,
                int(decoding_t),
                int(encoding_t),
            )
            videos = {
                "_t000.mp4": sv4d.first_frame_video(tensor, reference),
                "_grid.mp4": grid_video(grid),
            }
            written = sv4d_job.write_videos(
                Path(self.options.outputs) / "sv4d", videos, per_run=len(videos)
            )
        return str(written[0]), str(written[1])


def build_demo(app: Sv4dApp) -> Any:
    """The ``gradio.Blocks`` page around ``app``."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    import gradio as gr

    def run(
        video: Any, seed: float, steps: float, encoding_t: float, decoding_t: float, remove_bg: bool
    ) -> tuple:
        try:
            return app.sample(video, seed, steps, encoding_t, decoding_t, bool(remove_bg))
        except SgmError as error:
            raise gr.Error(str(error)) from None

    with gr.Blocks(title=TITLE) as demo:
        gr.Markdown(f"# {TITLE}")
        if app.problem:
            gr.Markdown(f"**{app.problem}**", elem_id="missing-checkpoint")
        with gr.Row():
            with gr.Column():
                video = gr.Video(label="Input video (gif or mp4, 21 frames are used)")
                generate = gr.Button("Generate", variant="primary")
            with gr.Column():
                views = gr.Video(label="SV3D views of the first frame")
                result = gr.Video(label="Input view and 8 novel views")
        with gr.Accordion("Advanced options", open=False):
            seed = gr.Slider(0, 100, value=23, step=1, label="Seed")
            steps = gr.Slider(1, 50, value=20, step=1, label="Sampling steps")
            encoding_t = gr.Slider(1, 40, value=8, step=1, label="Frames encoded at a time")
            decoding_t = gr.Slider(1, 14, value=4, step=1, label="Frames decoded at a time")
            remove_bg = gr.Checkbox(value=False, label="Remove background (rembg)")
        generate.click(
            fn=run,
            inputs=[video, seed, steps, encoding_t, decoding_t, remove_bg],
            outputs=[views, result],
            api_name="sv4d",
        )
    return demo
