"""SD 2.1 / SDXL image sampling page.

    streamlit run scripts/demo/sampling.py [-- --checkpoints DIR --device cuda]

Checkpoints are read from ``checkpoints/`` under their released names; see
``sgm.demo.options`` for the flags and ``SGM_DEMO_*`` variables.
"""

from sgm.demo.st_sampling import main

main(__file__)
