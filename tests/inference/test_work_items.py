"""Work items of a run: prompts files (plain lines, JSON lines, every bad input named by its
line), image folders and globs, global indices, seeds, names, and dealing items to ranks
(every item to exactly one rank, whatever the world size)."""

from __future__ import annotations

import json

import pytest

from sgm.errors import InputError
from sgm.inference.work_items import (
    Prompt,
    deal,
    find_images,
    input_items,
    prompt_items,
    read_prompts_file,
)


def _write(tmp_path, data: bytes | str, name="prompts.txt"):
    path = tmp_path / name
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def test_plain_and_json_lines_mix(tmp_path):
    lines = [
        "a red fox",
        "",
        json.dumps({"prompt": "a cat", "negative_prompt": "blurry", "seed": 5}),
        "  " + json.dumps({"prompt": " a dog ", "width": 512, "height": 768}),
        "last one",
    ]
    path = _write(tmp_path, "\n".join(lines))
    assert read_prompts_file(path) == [
        Prompt("a red fox"),
        Prompt("a cat", negative_prompt="blurry", seed=5),
        Prompt("a dog", width=512, height=768),
        Prompt("last one"),
    ]


def test_utf8_prompts_and_bom(tmp_path):
    path = _write(tmp_path, "\ufeffün café\n日本の城\n".encode())
    assert [p.prompt for p in read_prompts_file(path)] == ["ün café", "日本の城"]


@pytest.mark.parametrize(
    "data,expected",
    [
        (b"", "holds no prompt"),
        (b"\n  \n\t\n", "holds no prompt"),
        (b"fine\nbad \xff byte\n", "line 2: not UTF-8"),
        (b'ok\nok\n{"prompt": "x",}\n', "line 3: malformed JSON"),
        (b'{"prompt": "x", "sed": 3}\n', "line 1: unknown key(s) ['sed']"),
        (b'a\n{"prompt": ""}\n', "line 2: 'prompt' must be a non-empty string"),
        (b'{"prompt": "x", "seed": -1}\n', "line 1: 'seed' must be a non-negative integer"),
        (b'{"prompt": "x", "width": 2.5}\n', "line 1: 'width' must be a positive integer"),
        (b'{"prompt": "x", "seed": true}\n', "line 1: 'seed' must be a non-negative integer"),
        (b"[1, 2]\n", None),  # not an object: read as a plain prompt
        (b'{"prompt": "x", "negative_prompt": 3}\n', "line 1: 'negative_prompt' must be"),
        (b"{}\n", "line 1: 'prompt' must be a non-empty string"),
        (b'"just a string"\n', None),
    ],
)
def test_bad_prompts_files_name_the_line(tmp_path, data, expected):
    path = _write(tmp_path, data)
    if expected is None:
        assert read_prompts_file(path)[0].prompt == data.decode().strip()
        return
    with pytest.raises(InputError) as error:
        read_prompts_file(path)
    assert str(path) in str(error.value) and expected in str(error.value)
    assert "\n" not in str(error.value)


def test_json_line_that_is_not_an_object(tmp_path):
    path = _write(tmp_path, "{\n")
    with pytest.raises(InputError, match="line 1: malformed JSON"):
        read_prompts_file(path)


def test_missing_prompts_file(tmp_path):
    with pytest.raises(InputError, match="cannot read it"):
        read_prompts_file(tmp_path / "nope.txt")


def test_indices_seeds_and_names():
    prompts = [Prompt("a"), Prompt("b", seed=100), Prompt("c")]
    items = prompt_items(prompts, num_samples=2, seed=42)
    assert [i.index for i in items] == list(range(6))
    # base seed + global index, unless the line gives one (then + sample)
    assert [i.seed for i in items] == [42, 43, 100, 101, 46, 47]
    assert [(i.prompt, i.sample) for i in items] == [
        ("a", 0),
        ("a", 1),
        ("b", 0),
        ("b", 1),
        ("c", 0),
        ("c", 1),
    ]
    assert [i.stem() for i in items[:2]] == ["000000000", "000000001"]
    assert items[2].describe() == {"index": 2, "seed": 100, "prompt": "b", "sample": 0}


def test_one_prompt_matches_the_single_prompt_seeds():
    """One prompt, k samples: seeds seed + k, as the command line always numbered them."""
    assert [i.seed for i in prompt_items([Prompt("x")], num_samples=3, seed=7)] == [7, 8, 9]


@pytest.mark.parametrize("count", [0, 1, 5, 8])
@pytest.mark.parametrize("world", [1, 2, 3, 7, 9])
def test_deal_gives_every_item_to_exactly_one_rank(count, world):
    items = prompt_items([Prompt(str(i)) for i in range(count)])
    shares = [deal(items, rank, world) for rank in range(world)]
    dealt = sorted(i.index for share in shares for i in share)
    assert dealt == list(range(count))
    sizes = [len(s) for s in shares]
    assert max(sizes, default=0) - min(sizes, default=0) <= 1
    if world > count:
        assert sizes.count(0) == world - count  # idle ranks


def test_deal_rejects_a_rank_outside_the_world():
    with pytest.raises(InputError, match="rank 2 outside a world of 2"):
        deal([], 2, 2)


def test_images_from_folder_glob_and_file(tmp_path):
    for name in ("b.png", "a.JPG", "c.webp", "notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "d.png").write_bytes(b"x")
    assert [p.name for p in find_images(tmp_path)] == ["a.JPG", "b.png", "c.webp"]
    assert [p.name for p in find_images(str(tmp_path / "**" / "*.png"))] == ["b.png", "d.png"]
    assert find_images(tmp_path / "b.png") == [tmp_path / "b.png"]
    items = input_items(find_images(tmp_path), num_samples=2, seed=10)
    assert [(i.index, i.seed, i.sample) for i in items[:3]] == [(0, 10, 0), (1, 11, 1), (2, 12, 0)]
    assert items[2].input == str(tmp_path / "b.png")


@pytest.mark.parametrize("spec", ["missing_folder", "*.gif", "empty"])
def test_inputs_naming_no_image(tmp_path, spec):
    (tmp_path / "empty").mkdir()
    (tmp_path / "x.txt").write_text("x")
    with pytest.raises(InputError, match="input .*: no"):
        find_images(str(tmp_path / spec))
