"""Thread settings of the feature engines: the one place they are decided.

* ``inference_threads()``: threads the network may use: ``$VINSPECT_THREADS`` if set, else every core.
  onnxruntime's intra-op pool, OpenVINO's ``INFERENCE_NUM_THREADS`` and the number of OpenVINO streams
  follow it.
* ``decode_workers()``: threads decoding and resizing images one batch ahead of the network (at most 4).
  Decoding runs in parallel with inference and takes about a sixth of the time per image, so on a 2-core
  machine the two share the cores rather than each getting its own.
* ``OPENVINO_REQUEST_IMAGES``: images per OpenVINO infer request.  A batch from the pipeline is split into
  requests of this size, run asynchronously on OpenVINO's streams (one per core, THROUGHPUT hint), so every
  core runs a network while the decoding threads fill the next batch.  Small requests keep the depthwise
  layers in the cache: on the 2-core reference machine (EfficientNet-Lite0, 224 px) requests of 1-2 images
  took 5 ms an image in fp32 against 11 ms for 8 (measured under load from other jobs, noisy).
"""

from __future__ import annotations

import os

THREADS_ENV = "VINSPECT_THREADS"
OPENVINO_REQUEST_IMAGES = 2


def inference_threads() -> int:
    env = os.environ.get(THREADS_ENV, "").strip()
    if env:
        if not env.isdigit() or int(env) < 1:
            from ..errors import BadInputError

            raise BadInputError(f"{THREADS_ENV}={env!r}: use a positive number of threads")
        return int(env)
    return os.cpu_count() or 1


def decode_workers() -> int:
    return max(1, min(4, os.cpu_count() or 1))
