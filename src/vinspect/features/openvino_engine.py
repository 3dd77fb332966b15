"""The openvino engine: the backbone cut at a layer, normalisation and pooling inside, run with OpenVINO.

* Converted once from the ONNX export the onnx engine makes (``<cache>/onnx/<settings>.onnx``, shared with
  it) into OpenVINO IR, ``<cache>/openvino/<settings>.xml/.bin``; the file name is the feature-cache key, so
  it depends on the weights' sha256, layer, pooling, input size and precision.  A later run reads the IR
  without importing torch.
* OpenVINO's compiled-model cache (``CACHE_DIR`` = ``<cache>/openvino/compiled``) keeps the compiled
  network, so a second process starts in a fraction of the compile time.
* Precision: ``fp32`` (``INFERENCE_PRECISION_HINT=f32``, features equal to torch's to about 1e-6),
  ``bf16`` (``INFERENCE_PRECISION_HINT=bf16``; native on CPUs with avx512_bf16 or AMX, emulated and slow
  elsewhere) and ``int8`` (NNCF post-training quantisation, calibrated on images of the data; the float
  parts run in fp32, because bf16 on top of int8 moved the features much further).
* Throughput: the THROUGHPUT hint makes one stream per core; each batch from the pipeline is split into
  infer requests of ``OPENVINO_REQUEST_IMAGES`` images run asynchronously (``AsyncInferQueue``) on those
  streams while the decoding threads prepare the next batch.  Thread settings: :mod:`.threads`.

Input ``images``: uint8 (N, H, W, 3) RGB at the input size; output ``features``: float32 (N, D).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import threading
from pathlib import Path

import numpy as np

from ..errors import BadInputError
from .threads import OPENVINO_REQUEST_IMAGES, inference_threads

OV_PRECISIONS = ("fp32", "bf16", "int8")
# the CPU flags recorded with results (and read by the engine choice); bf16 is native with either of BF16_FLAGS
CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16",
             "amx_int8")
BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_flags() -> list[str]:
    """The instruction-set flags of this CPU that matter to the engines (from /proc/cpuinfo; [] elsewhere)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    have = set(line.split(":", 1)[1].split())
                    return [flag for flag in CPU_FLAGS if flag in have]
    except OSError:
        pass
    return []


def native_bf16(flags: list[str] | None = None) -> bool:
    flags = cpu_flags() if flags is None else flags
    return any(f in flags for f in BF16_FLAGS)


def openvino_status() -> tuple[bool, str]:
    """(True, version) when OpenVINO imports, else (False, why not)."""
    try:
        import openvino
    except Exception as e:  # noqa: BLE001 - a broken install is as good as none
        return False, f"OpenVINO is not installed ({type(e).__name__}: {e})"
    return True, f"OpenVINO {getattr(openvino, '__version__', '?').split('-')[0]}"


_core = None
_core_lock = threading.Lock()


def _ov_core(compiled_cache: Path | None):
    global _core
    import openvino as ov

    with _core_lock:
        if _core is None:
            _core = ov.Core()
        if compiled_cache is not None:
            compiled_cache.mkdir(parents=True, exist_ok=True)
            _core.set_property({"CACHE_DIR": str(compiled_cache)})
        return _core


def compile_config(precision: str, threads: int | None = None) -> dict:
    """The CPU plugin's settings for ``precision`` (the one place they are chosen; threads from :mod:`.threads`)."""
    threads = threads or inference_threads()
    return {"PERFORMANCE_HINT": "THROUGHPUT",
            "INFERENCE_NUM_THREADS": threads,
            "NUM_STREAMS": threads,  # one single-threaded stream per core
            "INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32"}


def convert(onnx_path: Path, xml_path: Path, precision: str = "fp32", calibration=None) -> Path:
    """ONNX -> OpenVINO IR (fp32 weights; int8: quantised by NNCF on ``calibration``), written atomically."""
    import openvino as ov

    model = ov.convert_model(str(onnx_path))
    if precision == "int8":
        model = quantize_int8(model, calibration() if callable(calibration) else calibration)
    xml_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = xml_path.with_name(f"{xml_path.stem}.{os.getpid()}.part.xml")
    ov.save_model(model, str(tmp), compress_to_fp16=False)
    tmp.with_suffix(".bin").replace(xml_path.with_suffix(".bin"))
    tmp.replace(xml_path)
    return xml_path


def quantize_int8(model, calibration: np.ndarray | None):
    """NNCF post-training quantisation (defaults: symmetric int8 weights and activations, fast bias correction)
    calibrated on real images of the dataset, one image per calibration step."""
    if calibration is None or len(calibration) == 0:
        raise BadInputError("--precision int8 needs calibration images (64 images spread over the dataset are used)")
    os.environ.setdefault("NNCF_CI", "1")  # a library call sends no telemetry
    import nncf

    nncf.set_log_level(logging.ERROR)
    data = nncf.Dataset([calibration[i:i + 1] for i in range(len(calibration))])
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):  # its progress bars
        return nncf.quantize(model, data, subset_size=len(calibration))


class OpenVinoEngine:
    name = "openvino"

    def __init__(self, xml_path: Path, onnx_path: Path | None = None, build_onnx=None, precision: str = "fp32",
                 calibration=None, threads: int | None = None, compiled_cache: Path | None = None):
        """``build_onnx()`` (exporting the fp32 ONNX file to ``onnx_path``) is called only when neither the IR
        nor the ONNX file exists yet (first use)."""
        if precision not in OV_PRECISIONS:
            raise BadInputError(f"--precision {precision!r}: the openvino engine runs {', '.join(OV_PRECISIONS)}")
        self.path = Path(xml_path)
        self.precision = precision
        if not self.path.is_file():
            if onnx_path is None:
                raise BadInputError(f"{self.path}: no such OpenVINO model")
            onnx_path = Path(onnx_path)
            if not onnx_path.is_file():
                if build_onnx is None:
                    raise BadInputError(f"{onnx_path}: no such ONNX model")
                build_onnx()
            convert(onnx_path, self.path, precision, calibration)
        import openvino as ov

        core = _ov_core(Path(compiled_cache) if compiled_cache else self.path.parent / "compiled")
        self.config = compile_config(precision, threads)
        # compiling from the path lets OpenVINO take the network from its compiled-model cache
        self.compiled = core.compile_model(str(self.path), "CPU", self.config)
        n_requests = int(self.compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
        self.queue = ov.AsyncInferQueue(self.compiled, max(1, n_requests))
        self.queue.set_callback(self._done)
        self.dim = self.compiled.output(0).get_partial_shape()[1].get_length()
        self._out: np.ndarray | None = None
        self._lock = threading.Lock()  # one batch at a time through the queue (callers may be several threads)

    def _done(self, request, start):
        self._out[start:start + len(request.get_output_tensor(0).data)] = request.get_output_tensor(0).data

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        batch = np.ascontiguousarray(batch, dtype=np.uint8)
        step = OPENVINO_REQUEST_IMAGES
        with self._lock:
            self._out = np.empty((len(batch), self.dim), np.float32)
            for i in range(0, len(batch), step):
                self.queue.start_async({0: batch[i:i + step]}, userdata=i)
            self.queue.wait_all()
            out, self._out = self._out, None
        return out
