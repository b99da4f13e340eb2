"""Write the example inputs shipped in ``sgm/assets``: a picture of a ball on a table
(``test_image.png``) and short clips of a ball rolling on white (``sv4d_videos/``).

    python scripts/make_example_inputs.py            # rewrites sgm/assets/*
    python scripts/make_example_inputs.py --out elsewhere/

Every pixel is drawn here (PIL shapes), so the files carry no third-party content.
"""

import sys
from pathlib import Path

from PIL import Image, ImageDraw

from sgm import cli

ASSETS = Path(__file__).resolve().parents[1] / "sgm" / "assets"
FRAMES = 21  # what SV4D reads


def ball(size: tuple[int, int], x: float, floor: bool) -> Image.Image:
    width, height = size
    image = Image.new("RGB", size, (255, 255, 255))
    draw = ImageDraw.Draw(image)
    if floor:
        draw.rectangle((0, height * 2 // 3, width, height), fill=(196, 164, 120))
    r = min(width, height) // 5
    cx, cy = int(x * width), height * 2 // 3 - r
    draw.ellipse((cx - r + 4, cy + r - 6, cx + r + 4, cy + r + 6), fill=(120, 100, 80))
    draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=(200, 40, 40))
    draw.ellipse((cx - r // 2, cy - r // 2, cx - r // 6, cy - r // 6), fill=(240, 150, 150))
    return image


def main(argv=None) -> int:
    parser = cli.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--out", type=cli.output_folder, default=ASSETS, help="folder to write the files into"
    )
    args = cli.parse(parser, argv)
    return cli.run(lambda: write(args.out), prog="make_example_inputs.py")


def write(out: Path) -> None:
    import imageio_ffmpeg
    import numpy as np

    out.mkdir(parents=True, exist_ok=True)
    ball((256, 192), 0.5, floor=True).save(out / "test_image.png", optimize=True)
    videos = out / "sv4d_videos"
    videos.mkdir(exist_ok=True)
    frames = [ball((128, 128), 0.3 + 0.4 * i / (FRAMES - 1), False) for i in range(FRAMES)]
    frames[0].save(
        videos / "camel.gif", save_all=True, append_images=frames[1:], duration=100, loop=0
    )
    writer = imageio_ffmpeg.write_frames(
        str(videos / "test_video1.mp4"), (128, 128), fps=10, codec="libx264", quality=5
    )
    writer.send(None)
    for frame in frames:
        writer.send(np.ascontiguousarray(np.asarray(frame)))
    writer.close()


if __name__ == "__main__":
    sys.exit(main())
