"""The command lines, installed with the package (``[project.scripts]`` in pyproject.toml)
and runnable as ``python -m sgm.commands.<module>``; the scripts under ``scripts/`` and
``main.py`` call the same ``main(argv=None) -> int``:

- ``sample_image``: ``sgm-sample-image``, ``scripts/sampling/simple_image_sample.py``
- ``sample_video``: ``sgm-sample-video``, ``scripts/sampling/simple_video_sample.py``
- ``sample_4d``: ``sgm-sample-4d``, ``scripts/sampling/simple_video_sample_4d.py``
- ``sample_4d2``: ``sgm-sample-4d2``, ``scripts/sampling/simple_video_sample_4d2.py``
- ``convert``: ``sgm-convert``, ``scripts/convert.py``
- ``detect``: ``sgm-detect``, ``scripts/demo/detect.py``
- ``pack_shards``: ``sgm-pack-shards``, ``scripts/data/pack_shards.py``
- ``train``: ``sgm-train``, ``main.py``
- ``lora``: ``sgm-lora``, ``scripts/lora.py`` (inspect and bake adapter files)
- ``cache_conditioning``: ``sgm-cache-conditioning``, ``scripts/data/cache_conditioning.py``
- ``tiny``: ``sgm-tiny``, ``scripts/tiny_model.py`` (tiny random-weight models of the releases)

Every one checks all its flags before loading a model or creating a folder; bad input
prints one line and exits with status 2.
"""
