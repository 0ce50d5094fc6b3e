"""Progress output of `tracegen run`: our own bars and stage lines, and the libraries' bars.

Kept apart from the runner so that the CLI can tidy the terminal before it prints an error,
whatever stage the error came from.
"""

from __future__ import annotations

import sys


def quiet_libraries() -> None:
    """`--quiet` means no progress output at all: transformers draws its own bars (loading
    weights, de-quantising a GGUF file) and huggingface_hub its download bars; switch them
    off, along with their info-level logging."""
    try:
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()
        transformers_logging.set_verbosity_error()
    except ImportError:  # tracing needs transformers; `info` never gets here
        pass
    try:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    except ImportError:
        pass


def end_progress_bars() -> None:
    """Close every progress bar still drawn, so that what is printed next starts on a line of
    its own instead of after an unfinished bar (an error in the middle of a stage). Our bars
    do not stay on screen (leave=False); a library's that would is ended with a newline."""
    tqdm_module = sys.modules.get("tqdm.std")
    if tqdm_module is None:
        return
    bars = list(getattr(tqdm_module.tqdm, "_instances", ()))
    for bar in bars:
        leave = getattr(bar, "leave", False)
        bar.leave = False
        bar.close()
        if leave:
            print(file=sys.stderr, flush=True)
