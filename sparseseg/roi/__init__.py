"""DNN-ROI data, the traditional threshold ROI finder, and ROI charge metrics, after the
ProtoDUNE-HD DNN-ROI comparison (H. Nam, "Status report on DNN SigProc in PD-HD").

Data
----
:func:`simulate_roi_sample` shoots one particle -- a muon track at angle ``theta_xz`` or an
electron shower of energy E -- with the simulator's 3D physics (multiple scattering, delta
rays, EM cascade, recombination, diffusion) and images one wire plane (default U) as a
wire x tick waveform window at the full 0.5 us tick resolution:

* ``truth`` (W, T): the true charge of each (wire, tick) -- the diffused charge samples of
  the simulator binned at tick resolution (not upsampled rows), smeared in time by a
  Gaussian of ``signal_sigma`` ticks (electronics shaping + software filter); ADC units,
  so a MIP crossing one U wire gives ~100-150 ADC in all.
* ``signal`` (W, T): the deconvolved waveform = ``truth`` + electronics noise (white noise
  through the same Gaussian, ``noise_rms`` per tick) + a slow baseline wander per wire
  (``baseline_rms``: the low-frequency noise that deconvolution leaves on induction planes).
* ``mask`` (W, T): the truth ROI, ticks where ``truth`` > ``truth_threshold``.
* network ``inputs`` (3, W, T/rebin), modelled on DNN-ROI's: the rebinned (mean) signal
  (scaled by ``signal_scale``), and the loose and tight ROI maps of the traditional finder
  (rebinned by max); ``target`` (1, W, T/rebin) is the truth mask rebinned by max. The time
  rebin factor is ``rebin`` (default 10, as in the DNN-ROI training).

Traditional ROI
---------------
:func:`threshold_roi`: subtract a running mean of ``lf_window`` ticks from each waveform (a
low-frequency filter, as the tight/loose LF filters do), mark ticks above ``tight_sigma`` and
``loose_sigma`` times the wire's robust noise RMS, pad them, and keep the loose regions that
hold a tight tick. Long, slow signals -- tracks at large theta_xz, which spread their charge
over hundreds of ticks of few wires -- are largely removed by the LF filter: this is where
the traditional method loses charge.

Metrics (as in that report)
------------------
Per channel (wire) the reconstructed charge is the sum of the signal inside the ROI, after a
linear baseline through each ROI's end ticks; the truth is the summed true charge. Over the
valid truth channels (Q_truth >= ``min_truth``) with r = Q_reco / Q_truth:

* inefficiency = 100 x (bad channels) / (valid truth channels), a bad channel having
  r < ``bad_ratio`` (its charge was essentially not found);
* bias = 100 (|mean r| - 1) and resolution = 100 RMS(r) / |mean r|, over the valid channels
  that are not bad (RMS = standard deviation about the mean, as ROOT's histogram RMS);
* shower charge profile R = sum Q_reco / sum Q_truth over the 42 wires from the vertex wire
  along the shower direction (about 1-2 radiation lengths).

:func:`roi_evaluate` compares the traditional ROI with any ROI networks on the same events,
vs theta_xz (tracks) and shower energy, and writes tables, JSON and plots.

Modules: :mod:`.data` (the waveform simulation and datasets), :mod:`.threshold` (the
traditional ROI), :mod:`.charge` (charge metrics), :mod:`.scan` (``roi-eval``: scans, tables,
plots, summary, cost). The networks are in :mod:`sparseseg.models.roi_nets`.
"""
from __future__ import annotations

from .data import (  # noqa: F401
    DEFAULT_ANGLES, DEFAULT_ENERGIES, ROIConfig, ROISample, make_inputs, rebin_time,
    roi_dataset, simulate_roi_sample,
)
from .threshold import threshold_roi  # noqa: F401
from .charge import charge_metrics, charge_profile, roi_charge  # noqa: F401
from .scan import (  # noqa: F401
    format_roi_summary, format_roi_tables, load_roi_models, plot_roi_metrics, predict_mask,
    prob_to_mask, roi_cost, roi_evaluate, roi_summary, shipped_roi_weights,
)

__all__ = [
    "ROIConfig",
    "ROISample",
    "simulate_roi_sample",
    "roi_dataset",
    "make_inputs",
    "rebin_time",
    "threshold_roi",
    "roi_charge",
    "prob_to_mask",
    "charge_metrics",
    "charge_profile",
    "predict_mask",
    "roi_evaluate",
    "format_roi_tables",
    "plot_roi_metrics",
    "roi_summary",
    "format_roi_summary",
    "roi_cost",
    "load_roi_models",
    "shipped_roi_weights",
    "DEFAULT_ANGLES",
    "DEFAULT_ENERGIES",
]
