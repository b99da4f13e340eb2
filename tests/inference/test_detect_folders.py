"""detect.py searches folders with their subfolders (the image command line writes into
``<folder>/<version>/``), within a bound, and its README, docstring and exit status agree."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from sgm.commands import detect

REPO = Path(__file__).resolve().parents[2]


def _watermarked_png(path: Path, seed: int) -> None:
    """A 256x256 picture watermarked by invisible-watermark's own encoder."""
    import cv2
    from imwatermark import WatermarkEncoder

    from sgm.inference.watermark import WATERMARK_BITS

    pixels = np.random.RandomState(seed).randint(0, 256, (256, 256, 3), dtype=np.uint8)
    pixels = cv2.GaussianBlur(pixels, (9, 9), 3)
    encoder = WatermarkEncoder()
    encoder.set_watermark("bits", WATERMARK_BITS)
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), encoder.encode(pixels, "dwtDct"))


def _decoded_matches(path: Path) -> int:
    import cv2
    from imwatermark import WatermarkDecoder

    from sgm.inference.watermark import WATERMARK_BITS

    bits = WatermarkDecoder("bits", 48).decode(cv2.imread(str(path)), "dwtDct")
    return sum(int(a) == b for a, b in zip(bits, WATERMARK_BITS))


def _results(out: str) -> dict[str, str]:
    lines = out.strip().splitlines()
    return dict(line.split(": ", 1) for line in lines[:-1])


def test_readme_example_finds_images_in_version_subfolders(tmp_path, monkeypatch, capsys):
    """``detect.py outputs/simple_image_sample/`` (the README's example) on the layout the
    image command line writes."""
    monkeypatch.chdir(tmp_path)
    first = Path("outputs/simple_image_sample/sdxl_base_1.0/000000000.png")
    second = Path("outputs/simple_image_sample/sd2.1/000000000.png")
    _watermarked_png(first, 0)
    _watermarked_png(second, 1)
    assert detect.main(["outputs/simple_image_sample/"]) == 0
    results = _results(capsys.readouterr().out)
    assert sorted(results) == sorted(
        str(Path("outputs/simple_image_sample") / p.relative_to("outputs/simple_image_sample"))
        for p in (first, second)
    )
    for path, line in results.items():
        assert line == f"{_decoded_matches(tmp_path / path)}/48 bits match: watermarked"


def test_folder_search_is_bounded(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(detect, "MAX_DEPTH", 2)
    _watermarked_png(tmp_path / "a" / "b" / "two_down.png", 0)
    _watermarked_png(tmp_path / "a" / "b" / "c" / "three_down.png", 1)
    _watermarked_png(tmp_path / ".hidden" / "skipped.png", 2)
    assert detect.main([str(tmp_path)]) == 0
    assert list(_results(capsys.readouterr().out)) == [str(tmp_path / "a" / "b" / "two_down.png")]

    (tmp_path / "deep" / "a" / "b" / "c").mkdir(parents=True)
    _watermarked_png(tmp_path / "deep" / "a" / "b" / "c" / "x.png", 0)
    assert detect.main([str(tmp_path / "deep")]) == 2
    err = capsys.readouterr().err
    assert "folder holds no images (searched 2 levels deep)" in err

    monkeypatch.setattr(detect, "MAX_IMAGES", 1)
    assert detect.main([str(tmp_path / "a")]) == 2
    out, err = capsys.readouterr()
    assert not out and "more than 1 images; name a subfolder or a glob" in err
    assert len(err.strip().splitlines()) == 1


def _readme_detect_section() -> str:
    text = (REPO / "README.md").read_text()
    start = text.index("### Checking an image for the watermark")
    return text[start : text.index("\n### ", start + 1)]


@pytest.mark.parametrize("unreadable", [False, True])
def test_exit_status_is_the_one_readme_and_docstring_state(tmp_path, capsys, unreadable):
    _watermarked_png(tmp_path / "v" / "ok.png", 0)
    if unreadable:
        (tmp_path / "v" / "broken.png").write_text("not an image")
    code = detect.main([str(tmp_path)])
    out = capsys.readouterr().out
    assert out.strip().splitlines()[-1].endswith(f"{int(unreadable)} unreadable")
    readme = " ".join(_readme_detect_section().split())
    doc = " ".join(detect.__doc__.split())
    # what both say: 1 when some files could not be read, 0 when every file was checked
    said_readme = re.search(
        r"the exit status is then (\d) \((\d) when every file was checked", readme
    )
    said_doc = re.search(r"(\d) when every file was checked, (\d) when some could not be read", doc)
    assert said_readme and said_doc
    readme_status = int(said_readme.group(1 if unreadable else 2))
    doc_status = int(said_doc.group(2 if unreadable else 1))
    assert code == readme_status == doc_status == (1 if unreadable else 0)
