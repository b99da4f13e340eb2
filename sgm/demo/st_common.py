"""Streamlit pieces every page shares: options, cached models, errors, sampler widgets."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import streamlit as st

from ..errors import SgmError
from ..inference.api import Discretization, Guider, Sampler
from .image import ImageRequest
from .options import DemoOptions, demo_options, script_argv


def page_options(script: str | os.PathLike) -> DemoOptions:
    """The page's options (its command line after ``--``, then ``SGM_DEMO_*``); a bad one
    is shown in the page, which then stops."""
    try:
        return demo_options(script_argv(script), prog=os.path.basename(str(script)))
    except SgmError as error:
        st.error(str(error))
        st.stop()
        raise  # not reached: st.stop ends the run


@st.cache_resource(show_spinner=False, max_entries=2)
def cached_model(kind: str, key: tuple, _build: Callable[[], Any]) -> Any:
    """One built model per ``(kind, key)``, kept across reruns of the page."""
    return _build()


def run_checked(work: Callable[[], Any]) -> Any:
    """``work()``, or None with its one-line message shown when the input is refused."""
    try:
        return work()
    except SgmError as error:
        st.error(str(error))
        return None


def sampler_widgets(request: ImageRequest, key: str = "") -> ImageRequest:
    """Sidebar widgets for steps, sampler, discretization and guider (the original's
    defaults: 50 steps, Euler EDM, legacy DDPM, vanilla CFG 5.0)."""
    side = st.sidebar
    side.subheader("Sampler")
    request.steps = int(side.number_input("Steps", 1, 1000, request.steps, key=f"steps{key}"))
    samplers = [s.value for s in Sampler]
    request.sampler = side.selectbox(
        "Sampler", samplers, samplers.index(request.sampler), key=f"sampler{key}"
    )
    schedules = [d.value for d in Discretization]
    request.discretization = side.selectbox("Discretization", schedules, key=f"disc{key}")
    if request.discretization == Discretization.EDM.value:
        request.sigma_min = side.number_input(
            "sigma_min", value=0.03, format="%.4f", key=f"smin{key}"
        )
        request.sigma_max = side.number_input(
            "sigma_max", value=14.61, format="%.4f", key=f"smax{key}"
        )
        request.rho = side.number_input("rho", value=3.0, key=f"rho{key}")
    guiders = [g.value for g in Guider]
    request.guider = side.selectbox("Guider", guiders, key=f"guider{key}")
    if request.guider == Guider.VANILLA.value:
        request.scale = side.number_input("cfg-scale", value=5.0, min_value=0.0, key=f"cfg{key}")
    if request.sampler in (Sampler.EULER_EDM.value, Sampler.HEUN_EDM.value):
        request.s_churn = side.number_input("s_churn", value=0.0, min_value=0.0, key=f"churn{key}")
        request.s_noise = side.number_input("s_noise", value=1.0, min_value=0.0, key=f"snoise{key}")
    elif request.sampler in (Sampler.EULER_ANCESTRAL.value, Sampler.DPMPP2S_ANCESTRAL.value):
        request.eta = side.number_input("eta", value=1.0, min_value=0.0, key=f"eta{key}")
    elif request.sampler == Sampler.LINEAR_MULTISTEP.value:
        request.order = int(side.number_input("order", 1, 10, 4, key=f"order{key}"))
    return request
