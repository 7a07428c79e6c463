"""Subcommands of the ``napari-rrim-sr`` CLI (one module each, see :mod:`napari_rrim_sr.cli.main`)."""

from napari_rrim_sr.cli.main import main as main


def add_self_ensemble_flag(parser) -> None:
    """``--self-ensemble``, shared by ``upscale`` and ``evaluate``."""
    parser.add_argument(
        "--self-ensemble",
        action="store_true",
        help="average the model over the 8 rotations/flips of the input (geometric self-ensemble): "
        "8x the time, slightly higher fidelity",
    )
