"""SDXL-Turbo / SD-Turbo page: a new picture for every prompt, in 1 to 4 steps.

    streamlit run scripts/demo/turbo.py [-- --checkpoints DIR --device cuda]

Checkpoints: ``checkpoints/sd_xl_turbo_1.0.safetensors`` and
``checkpoints/sd_turbo.safetensors``; see ``sgm.demo.options`` for the flags.
"""

from sgm.demo.st_turbo import main

main(__file__)
