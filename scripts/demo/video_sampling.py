"""SVD / SVD-XT / SV3D image-to-video page.

    streamlit run scripts/demo/video_sampling.py [-- --checkpoints DIR --device cuda]

Checkpoints are read from ``checkpoints/<version>.safetensors``; see
``sgm.demo.options`` for the flags and ``SGM_DEMO_*`` variables.
"""

from sgm.demo.st_video import main

main(__file__)
